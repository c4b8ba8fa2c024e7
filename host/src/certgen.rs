//! `isobar certgen`: the certificates that secure xDS between Envoy and
//! isobar with mutual TLS (as `contour certgen` does). One CA signs a server
//! certificate for isobar's Service names and a client certificate for
//! Envoy; both sides trust only that CA. Written as Secrets (the in-cluster
//! default, which `deploy/certgen.yaml` runs as a Job) or as PEM files.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tracing::info;

pub const CA_SECRET: &str = "isobar-xds-ca";
pub const SERVER_SECRET: &str = "isobar-xds-server";
pub const CLIENT_SECRET: &str = "isobar-xds-client";

/// PEM material for the three Secrets.
pub struct Certs {
    pub ca_cert: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// What to issue.
#[derive(Clone, Debug)]
pub struct CertgenConfig {
    /// Namespace of isobar's Service (its DNS names go into the server cert).
    pub namespace: String,
    /// The Service's name (`isobar`).
    pub service: String,
    pub cluster_domain: String,
    /// Validity of the leaf certificates; the CA lives five times longer.
    pub days: u32,
}

impl Default for CertgenConfig {
    fn default() -> Self {
        CertgenConfig {
            namespace: "isobar-system".into(),
            service: "isobar".into(),
            cluster_domain: "cluster.local".into(),
            days: 365,
        }
    }
}

/// Days since the Unix epoch to a civil date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    // A day of slack for clocks behind ours.
    let (y, m, d) = civil(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil(today + i64::from(days));
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// Issues a fresh CA, server and client certificate.
pub fn generate(config: &CertgenConfig) -> anyhow::Result<Certs> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "isobar xDS CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca, config.days * 5);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?).context("issuing the CA")?;

    let s = &config.service;
    let ns = &config.namespace;
    let names = vec![
        s.clone(),
        format!("{s}.{ns}"),
        format!("{s}.{ns}.svc"),
        format!("{s}.{ns}.svc.{}", config.cluster_domain),
    ];
    let mut server = CertificateParams::new(names)?;
    server
        .distinguished_name
        .push(DnType::CommonName, s.as_str());
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server, config.days);
    let server_key = KeyPair::generate()?;
    let server_cert = server
        .signed_by(&server_key, &ca)
        .context("issuing the server certificate")?;

    // The client's name is not one the server answers to.
    let mut client = CertificateParams::new(vec!["envoy".to_string()])?;
    client.distinguished_name.push(DnType::CommonName, "envoy");
    client.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client, config.days);
    let client_key = KeyPair::generate()?;
    let client_cert = client
        .signed_by(&client_key, &ca)
        .context("issuing the client certificate")?;

    Ok(Certs {
        ca_cert: ca.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    })
}

fn secret(name: &str, namespace: &str, data: &[(&str, &str)], tls: bool) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "isobar-certgen".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some(if tls { "kubernetes.io/tls" } else { "Opaque" }.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The three Secrets, in `namespace`.
pub fn secrets(certs: &Certs, namespace: &str) -> Vec<Secret> {
    vec![
        secret(CA_SECRET, namespace, &[("ca.crt", &certs.ca_cert)], false),
        secret(
            SERVER_SECRET,
            namespace,
            &[
                ("tls.crt", &certs.server_cert),
                ("tls.key", &certs.server_key),
                ("ca.crt", &certs.ca_cert),
            ],
            true,
        ),
        secret(
            CLIENT_SECRET,
            namespace,
            &[
                ("tls.crt", &certs.client_cert),
                ("tls.key", &certs.client_key),
                ("ca.crt", &certs.ca_cert),
            ],
            true,
        ),
    ]
}

/// Creates the Secrets. Existing ones are kept (certificates already in
/// use stay valid) unless `overwrite`, which replaces them all.
pub async fn write_secrets(
    client: kube::Client,
    namespace: &str,
    certs: &Certs,
    overwrite: bool,
) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let existing: Vec<String> = {
        let mut found = Vec::new();
        for name in [CA_SECRET, SERVER_SECRET, CLIENT_SECRET] {
            if api
                .get_opt(name)
                .await
                .with_context(|| format!("reading secret {namespace}/{name}"))?
                .is_some()
            {
                found.push(name.to_string());
            }
        }
        found
    };
    if !existing.is_empty() && !overwrite {
        // A partial set would pair certificates from different CAs.
        info!(
            ?existing,
            "xDS certificates exist; keeping them (pass --overwrite to replace)"
        );
        return Ok(());
    }
    for s in secrets(certs, namespace) {
        let name = s.metadata.name.clone().unwrap_or_default();
        if existing.contains(&name) {
            let mut s = s;
            let current = api
                .get(&name)
                .await
                .with_context(|| format!("reading secret {namespace}/{name}"))?;
            s.metadata.resource_version = current.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &s)
                .await
                .with_context(|| format!("replacing secret {namespace}/{name}"))?;
        } else {
            api.create(&PostParams::default(), &s)
                .await
                .with_context(|| format!("creating secret {namespace}/{name}"))?;
        }
        info!(secret = %format!("{namespace}/{name}"), "written");
    }
    Ok(())
}

/// Writes the PEM files (for `isobar serve --xds-tls-*` and an Envoy
/// bootstrap outside a cluster).
pub fn write_files(dir: &Path, certs: &Certs, overwrite: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        ("ca.crt", &certs.ca_cert),
        ("server.crt", &certs.server_cert),
        ("server.key", &certs.server_key),
        ("client.crt", &certs.client_cert),
        ("client.key", &certs.client_key),
    ];
    for (name, _) in &files {
        let p = dir.join(name);
        if p.exists() && !overwrite {
            anyhow::bail!("{} exists (pass --overwrite to replace)", p.display());
        }
    }
    for (name, pem) in files {
        let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
        write_new(dir, name, pem.as_bytes(), mode)?;
    }
    Ok(())
}

/// Writes `dir/name` as a new file created with `mode` (a private key is
/// never readable by others, not even for a moment), then renames it into
/// place: the rename replaces a symlink at `name` rather than writing
/// through it, and `create_new` refuses to follow one at the temporary name.
fn write_new(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .with_context(|| format!("writing {}", tmp.display()));
    if let Err(e) = written.and_then(|()| {
        std::fs::rename(&tmp, &target).with_context(|| format!("writing {}", target.display()))
    }) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right_around_leap_years() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_789), (2026, 12, 2));
    }

    #[test]
    fn secrets_carry_the_keys_deploy_mounts() {
        let certs = generate(&CertgenConfig::default()).unwrap();
        let s = secrets(&certs, "isobar-system");
        let names: Vec<_> = s.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, [CA_SECRET, SERVER_SECRET, CLIENT_SECRET]);
        for secret in &s[1..] {
            let data = secret.data.as_ref().unwrap();
            assert!(
                data.contains_key("tls.crt")
                    && data.contains_key("tls.key")
                    && data.contains_key("ca.crt")
            );
            assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        }
        assert!(certs.server_key.contains("PRIVATE KEY"));
        assert!(certs.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    /// Issue 17: the key was written, then restricted, through whatever
    /// symlink sat at its name.
    #[cfg(unix)]
    #[test]
    fn keys_are_created_private_and_symlinks_are_replaced_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let certs = generate(&CertgenConfig::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.txt");
        std::fs::write(&elsewhere, "not yours").unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("server.key")).unwrap();
        write_files(&out, &certs, true).unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "not yours");
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&elsewhere), 0o644);
        for key in ["server.key", "client.key"] {
            let p = out.join(key);
            assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_file());
            assert_eq!(mode(&p), 0o600, "{key}");
        }
        assert_eq!(
            std::fs::read_to_string(out.join("server.key")).unwrap(),
            certs.server_key
        );
        // Without --overwrite, existing files stay.
        assert!(write_files(&out, &certs, false).is_err());
        let left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
