//! Plugins as OCI artifacts, in the Wasm OCI artifact layout (the CNCF TAG
//! Runtime's: an image manifest whose config has media type
//! `application/vnd.wasm.config.v0+json` and whose one layer is the
//! `application/wasm` component), so that `wkg`, `oras` and wasmCloud read
//! what `isobar plugin push` writes and the host reads what they push.
//!
//! The host pulls only by digest: a reference is a promise about bytes, and
//! the digest is checked on the manifest and on the layer (by the ORAS
//! client, and again here where the bytes come from the local cache). A
//! registry is untrusted input: sizes are capped, every request has a
//! deadline, and a failure never touches the plugin that is serving.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::plugin::Interface;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";

/// The largest component the host pulls; a registry that sends more is
/// cut off.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;
/// The largest manifest accepted (a Wasm artifact's is well under 1 KiB).
const MAX_MANIFEST_BYTES: usize = 64 << 10;
/// A pull or push that takes longer than this fails (a registry that
/// answers slowly must not hold a swap forever).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a pull or push failed. Callers branch on these: a digest mismatch
/// and a pull failure are different conditions on a Plugin.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OciError {
    #[error("{reference:?} is not an OCI reference: {message}")]
    BadReference { reference: String, message: String },
    #[error(
        "{0} names no digest: the host pulls only by digest (registry/repo@sha256:...); `isobar plugin push` prints it"
    )]
    NoDigest(String),
    #[error("pulling {reference}: {message}")]
    Pull { reference: String, message: String },
    #[error("{reference}: the registry's bytes are not the digest's: {message}")]
    DigestMismatch { reference: String, message: String },
    #[error("{reference} is not a Wasm component artifact: {message}")]
    NotWasm { reference: String, message: String },
    #[error("pushing {reference}: {message}")]
    Push { reference: String, message: String },
}

impl OciError {
    /// The Plugin condition reason this failure is reported under.
    pub fn reason(&self) -> &'static str {
        match self {
            OciError::BadReference { .. } | OciError::NoDigest(_) => "InvalidReference",
            OciError::DigestMismatch { .. } => "DigestMismatch",
            OciError::NotWasm { .. } => "ContractMismatch",
            OciError::Pull { .. } | OciError::Push { .. } => "PullFailed",
        }
    }
}

/// How to reach a registry.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Plain HTTP (a loopback test registry); otherwise HTTPS with the
    /// certificate verified against the system's roots.
    pub insecure: bool,
    /// Basic credentials (user, password); anonymous otherwise.
    pub basic: Option<(String, String)>,
    /// Overall deadline; [`DEFAULT_TIMEOUT`] when unset.
    pub timeout: Option<Duration>,
    /// PEM certificates trusted beside the system's roots (a registry
    /// behind a private CA).
    pub extra_roots: Vec<Vec<u8>>,
}

impl Access {
    fn auth(&self) -> RegistryAuth {
        match &self.basic {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    fn client(&self) -> Result<Client, OciDistributionError> {
        // reqwest is built without a bundled provider: ring, as kube and
        // tonic use. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client::try_from(ClientConfig {
            protocol: if self.insecure {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(Duration::from_secs(10)),
            platform_resolver: None,
            user_agent: concat!("isobar/", env!("CARGO_PKG_VERSION")),
            extra_root_certificates: self
                .extra_roots
                .iter()
                .map(|pem| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn deadline(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }
}

/// Credentials for `registry` from a `kubernetes.io/dockerconfigjson`
/// Secret's `.dockerconfigjson` (the `auths` map; `auth` is base64 of
/// `user:password`).
pub fn docker_config_auth(
    dockerconfigjson: &[u8],
    registry: &str,
) -> anyhow::Result<Option<(String, String)>> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        username: Option<String>,
        password: Option<String>,
        auth: Option<String>,
    }
    use anyhow::Context as _;
    use base64::Engine as _;
    let file: File = serde_json::from_slice(dockerconfigjson).context(".dockerconfigjson")?;
    let entry = file.auths.iter().find(|(k, _)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        host == registry
    });
    let Some((_, e)) = entry else { return Ok(None) };
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Ok(Some((u.clone(), p.clone())));
    }
    let Some(auth) = &e.auth else { return Ok(None) };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .context("auth is not base64")?;
    let text = String::from_utf8(decoded).context("auth is not UTF-8")?;
    let (u, p) = text.split_once(':').context("auth is not user:password")?;
    Ok(Some((u.to_string(), p.to_string())))
}

/// Parses `reference`; with `pinned`, a digest is required.
pub fn parse(reference: &str, pinned: bool) -> Result<Reference, OciError> {
    let r: Reference = reference.parse().map_err(|e| OciError::BadReference {
        reference: reference.to_string(),
        message: format!("{e}"),
    })?;
    if pinned && r.digest().is_none() {
        return Err(OciError::NoDigest(reference.to_string()));
    }
    Ok(r)
}

/// A component pulled (or read from the cache).
#[derive(Clone, Debug)]
pub struct Pulled {
    pub bytes: Vec<u8>,
    /// The manifest's digest, `sha256:…`: what a reference pins.
    pub manifest_digest: String,
    /// The layer's digest, `sha256:…` of the component bytes.
    pub layer_digest: String,
    /// Whether the bytes came from the cache (no request was made).
    pub cached: bool,
    /// The manifest as the registry served it.
    manifest: Vec<u8>,
}

/// The Wasm artifact config (`application/vnd.wasm.config.v0+json`).
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    pub created: String,
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    pub layer_digests: Vec<String>,
    pub component: Option<ComponentInfo>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ComponentInfo {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    pub target: Option<String>,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes `component` to `reference` (a tag or a digest) in the Wasm OCI
/// artifact layout; returns the manifest digest, which pins it.
pub async fn push(
    component: &[u8],
    interface: &Interface,
    reference: &str,
    access: &Access,
) -> Result<String, OciError> {
    let r = parse(reference, false)?;
    let failed = |message: String| OciError::Push {
        reference: reference.to_string(),
        message,
    };
    let layer = ImageLayer::new(component.to_vec(), LAYER_MEDIA_TYPE.to_string(), None);
    let config = WasmConfig {
        created: crate::report::rfc3339(std::time::SystemTime::now()),
        author: None,
        architecture: "wasm".into(),
        os: "wasip2".into(),
        layer_digests: vec![sha256(component)],
        component: Some(ComponentInfo {
            exports: interface.exports.clone(),
            imports: interface.imports.clone(),
            target: Some(format!(
                "{}/{}@{}",
                crate::plugin::CONTRACT_PACKAGE,
                interface.world.as_str(),
                interface.version.as_str()
            )),
        }),
    };
    let config_bytes = serde_json::to_vec(&config).map_err(|e| failed(e.to_string()))?;
    let config = Config::new(config_bytes, CONFIG_MEDIA_TYPE.to_string(), None);
    let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
    manifest.media_type = Some(MANIFEST_MEDIA_TYPE.to_string());
    let client = access
        .client()
        .map_err(|e| failed(format!("the registry client: {e}")))?;
    let auth = access.auth();
    let work = async {
        client
            .push(&r, &[layer], config, &auth, Some(manifest))
            .await
            .map_err(|e| failed(format!("{e}")))?;
        // The digest the registry serves (what a pull checks), not ours.
        let (_, digest) = client
            .pull_manifest_raw(&r, &auth, &[MANIFEST_MEDIA_TYPE])
            .await
            .map_err(|e| failed(format!("reading back the manifest: {e}")))?;
        Ok(digest)
    };
    tokio::time::timeout(access.deadline(), work)
        .await
        .map_err(|_| failed(format!("no answer within {:?}", access.deadline())))?
}

/// Pulls the component `reference` names, through `cache` when given.
/// With `pinned`, the reference must carry a digest.
pub async fn pull(
    reference: &str,
    access: &Access,
    cache: Option<&BlobCache>,
    pinned: bool,
) -> Result<Pulled, OciError> {
    let r = parse(reference, pinned)?;
    if let (Some(cache), Some(digest)) = (cache, r.digest())
        && let Some(hit) = cache.get(digest)
    {
        return Ok(hit);
    }
    let work = pull_remote(&r, reference, access);
    let pulled = tokio::time::timeout(access.deadline(), work)
        .await
        .map_err(|_| OciError::Pull {
            reference: reference.to_string(),
            message: format!("no answer within {:?}", access.deadline()),
        })??;
    if let Some(cache) = cache
        && let Err(e) = cache.put(&pulled)
    {
        tracing::warn!(reference, error = %e, "could not cache the pulled plugin");
    }
    Ok(pulled)
}

async fn pull_remote(r: &Reference, reference: &str, access: &Access) -> Result<Pulled, OciError> {
    let client = access.client().map_err(|e| OciError::Pull {
        reference: reference.to_string(),
        message: format!("the registry client: {e}"),
    })?;
    let auth = access.auth();
    let classify = |e: OciDistributionError| match e {
        OciDistributionError::DigestError(d) => OciError::DigestMismatch {
            reference: reference.to_string(),
            message: d.to_string(),
        },
        other => OciError::Pull {
            reference: reference.to_string(),
            message: other.to_string(),
        },
    };
    let not_wasm = |message: String| OciError::NotWasm {
        reference: reference.to_string(),
        message,
    };
    let (raw, digest) = client
        .pull_manifest_raw(r, &auth, &[MANIFEST_MEDIA_TYPE])
        .await
        .map_err(classify)?;
    if raw.len() > MAX_MANIFEST_BYTES {
        return Err(not_wasm(format!("a manifest of {} bytes", raw.len())));
    }
    // The client checked the body against the reference's digest; checked
    // here too, so that no client change can loosen it.
    let computed = sha256(&raw);
    if let Some(pinned) = r.digest()
        && pinned != computed
    {
        return Err(OciError::DigestMismatch {
            reference: reference.to_string(),
            message: format!("manifest is {computed}"),
        });
    }
    let manifest = wasm_manifest(&raw).map_err(not_wasm)?;
    let layer = &manifest.layers[0];
    let mut out = Capped {
        bytes: Vec::with_capacity(layer.size as usize),
        cap: MAX_COMPONENT_BYTES,
    };
    client
        .pull_blob(r, layer, &mut out)
        .await
        .map_err(classify)?;
    let bytes = out.bytes;
    if sha256(&bytes) != layer.digest {
        return Err(OciError::DigestMismatch {
            reference: reference.to_string(),
            message: format!(
                "layer is {}, the manifest says {}",
                sha256(&bytes),
                layer.digest
            ),
        });
    }
    Ok(Pulled {
        bytes,
        manifest_digest: digest,
        layer_digest: layer.digest.clone(),
        cached: false,
        manifest: raw.to_vec(),
    })
}

/// Reads a manifest as a Wasm artifact: the config media type, one
/// `application/wasm` layer within the size cap.
fn wasm_manifest(raw: &[u8]) -> Result<OciImageManifest, String> {
    let manifest: OciManifest =
        serde_json::from_slice(raw).map_err(|e| format!("manifest: {e}"))?;
    let OciManifest::Image(m) = manifest else {
        return Err("an image index, not an image manifest".into());
    };
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(format!(
            "config media type {} (want {CONFIG_MEDIA_TYPE})",
            m.config.media_type
        ));
    }
    match m.layers.as_slice() {
        [l] if l.media_type == LAYER_MEDIA_TYPE => {
            if l.size < 0 || l.size as u64 > MAX_COMPONENT_BYTES {
                return Err(format!(
                    "a layer of {} bytes (at most {MAX_COMPONENT_BYTES})",
                    l.size
                ));
            }
            Ok(m)
        }
        layers => Err(format!(
            "{} layers of types [{}] (want one {LAYER_MEDIA_TYPE})",
            layers.len(),
            layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A sink that refuses bytes past its cap (a registry that sends more than
/// its manifest said).
struct Capped {
    bytes: Vec<u8>,
    cap: u64,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if (self.bytes.len() + buf.len()) as u64 > self.cap {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "more than {} bytes",
                self.cap
            ))));
        }
        self.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Pulled artifacts on disk, by digest: manifests under
/// `manifests/sha256/`, components under `blobs/sha256/`. Everything read
/// back is hashed again (the directory is a cache, not a trust anchor).
#[derive(Clone, Debug)]
pub struct BlobCache {
    dir: PathBuf,
}

impl BlobCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BlobCache { dir: dir.into() }
    }

    fn path(&self, what: &str, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir.join(what).join("sha256").join(hex))
    }

    fn read_verified(&self, what: &str, digest: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.path(what, digest)?).ok()?;
        (sha256(&bytes) == digest).then_some(bytes)
    }

    /// The component a manifest digest names, if both are cached intact.
    pub fn get(&self, manifest_digest: &str) -> Option<Pulled> {
        let raw = self.read_verified("manifests", manifest_digest)?;
        let manifest = wasm_manifest(&raw).ok()?;
        let layer = manifest.layers[0].digest.clone();
        let bytes = self.read_verified("blobs", &layer)?;
        Some(Pulled {
            bytes,
            manifest_digest: manifest_digest.to_string(),
            layer_digest: layer,
            cached: true,
            manifest: raw,
        })
    }

    /// Keeps a pulled component: the blob first, then the manifest that
    /// names it (a manifest in the cache always has its blob).
    fn put(&self, pulled: &Pulled) -> std::io::Result<()> {
        let (Some(blob), Some(manifest)) = (
            self.path("blobs", &pulled.layer_digest),
            self.path("manifests", &pulled.manifest_digest),
        ) else {
            return Ok(());
        };
        write_private(&blob, &pulled.bytes)?;
        write_private(&manifest, &pulled.manifest)
    }
}

/// Writes aside and renames, in a directory only this user reads.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("a cache path has a parent");
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}
