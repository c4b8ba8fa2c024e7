//! SDS secrets from `kubernetes.io/tls` Secrets. Key material goes from the
//! store to Envoy without passing through a plugin.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, secret,
};
use k8s_openapi::api::core::v1::Secret as KubeSecret;

use super::{CompileError, names};

pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The TLS certificate of a `kubernetes.io/tls` Secret, named by
/// [`names::secret`]. `tls.crt` must hold a PEM certificate (chain) and
/// `tls.key` an unencrypted PEM private key; `stringData` (as written in a
/// manifest) overrides `data`, as the API server would. The key is checked
/// for shape only; Envoy parses it and NACKs what it cannot load.
pub fn secret(s: &KubeSecret) -> Result<Secret, CompileError> {
    let name = names::secret(
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default(),
    );
    let found = s.type_.as_deref().unwrap_or("Opaque");
    if found != TLS_SECRET_TYPE {
        return Err(CompileError::SecretType {
            secret: name,
            found: found.to_string(),
        });
    }
    let get = |key: &'static str| -> Result<Vec<u8>, CompileError> {
        let value = s
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.as_bytes().to_vec())
            .or_else(|| {
                s.data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|v| v.0.clone())
            })
            .unwrap_or_default();
        if value.iter().all(u8::is_ascii_whitespace) {
            return Err(CompileError::SecretKeyMissing {
                secret: name.clone(),
                key,
            });
        }
        Ok(value)
    };
    let crt = get("tls.crt")?;
    let key = get("tls.key")?;
    for (key_name, value) in [("tls.crt", &crt), ("tls.key", &key)] {
        if value.len() > MAX_PEM_BYTES {
            return Err(CompileError::SecretTooLarge {
                secret: name,
                key: key_name,
                size: value.len(),
                max: MAX_PEM_BYTES,
            });
        }
    }

    if !has_pem_block(&crt, |label| label == b"CERTIFICATE") {
        return Err(CompileError::SecretNotPem {
            secret: name,
            key: "tls.crt",
            expected: "CERTIFICATE",
        });
    }
    if has_pem_block(&key, |label| label == b"ENCRYPTED PRIVATE KEY") {
        return Err(CompileError::SecretEncryptedKey { secret: name });
    }
    if !has_pem_block(&key, |label| label.ends_with(b"PRIVATE KEY")) {
        return Err(CompileError::SecretNotPem {
            secret: name,
            key: "tls.key",
            expected: "PRIVATE KEY",
        });
    }

    let inline = |bytes| DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..Default::default()
    };
    Ok(Secret {
        name,
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(crt)),
            private_key: Some(inline(key)),
            ..Default::default()
        })),
    })
}

/// Why an object did not parse, without quoting it: serde's own message
/// names the offending value, and in a Secret that value is key material.
/// Diagnostics go to status, Events and `/debug/diagnostics`.
pub fn parse_error_without_content(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not valid JSON",
        Category::Data => "a field has the wrong type or an invalid value (data must be base64)",
        Category::Eof => "truncated",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// The most a `tls.crt` or `tls.key` may hold. Kubernetes caps a whole
/// Secret at 1 MiB; a certificate chain is a few KiB. Anything larger is
/// refused before it is scanned.
pub const MAX_PEM_BYTES: usize = 256 << 10;

/// Whether `data` holds a `-----BEGIN {label}-----` … `-----END {label}-----`
/// block whose label satisfies `want`, boundaries on lines of their own
/// (RFC 7468, as BoringSSL reads them).
///
/// One pass over the lines: a hostile value (a megabyte of `-----BEGIN`
/// lines) costs what reading it costs, never a rescan per marker.
pub fn has_pem_block(data: &[u8], want: impl Fn(&[u8]) -> bool) -> bool {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    const DASHES: &[u8] = b"-----";
    // The label of the block being read, if it is one we want.
    let mut open: Option<&[u8]> = None;
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = trim_ascii_end(line);
        if let Some(label) = line
            .strip_prefix(BEGIN)
            .and_then(|l| l.strip_suffix(DASHES))
        {
            open = want(label).then_some(label);
        } else if let Some(label) = line.strip_prefix(END).and_then(|l| l.strip_suffix(DASHES))
            && open == Some(label)
        {
            return true;
        }
    }
    false
}

fn trim_ascii_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use prost::Message;
    use serde_json::json;

    const CRT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIJ\n-----END EC PRIVATE KEY-----\n";

    fn kube(type_: &str, data: &[(&str, &str)]) -> KubeSecret {
        let mut s: KubeSecret = serde_json::from_value(
            json!({"metadata": {"name": "tls", "namespace": "ns"}, "type": type_}),
        )
        .unwrap();
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        s
    }

    #[test]
    fn tls_secret_becomes_an_sds_certificate() {
        let s = secret(&kube(
            TLS_SECRET_TYPE,
            &[("tls.crt", CRT), ("tls.key", KEY)],
        ))
        .unwrap();
        let s = Secret::decode(s.encode_to_vec().as_slice()).unwrap();
        assert_eq!(s.name, "ns/tls");
        let Some(secret::Type::TlsCertificate(cert)) = s.r#type else {
            panic!()
        };
        assert_eq!(
            cert.certificate_chain.unwrap().specifier,
            Some(data_source::Specifier::InlineBytes(CRT.as_bytes().to_vec()))
        );
        assert_eq!(
            cert.private_key.unwrap().specifier,
            Some(data_source::Specifier::InlineBytes(KEY.as_bytes().to_vec()))
        );
    }

    #[test]
    fn string_data_is_read_too() {
        let mut k = kube(TLS_SECRET_TYPE, &[("tls.crt", "garbage")]);
        k.string_data = Some(
            [
                ("tls.crt".to_string(), CRT.to_string()),
                ("tls.key".to_string(), KEY.to_string()),
            ]
            .into(),
        );
        assert!(secret(&k).is_ok());
    }

    #[test]
    fn wrong_type_is_refused() {
        let err = secret(&kube("Opaque", &[("tls.crt", CRT), ("tls.key", KEY)])).unwrap_err();
        assert_eq!(
            err,
            CompileError::SecretType {
                secret: "ns/tls".into(),
                found: "Opaque".into()
            }
        );
    }

    #[test]
    fn missing_cert_or_key_is_named() {
        let err = secret(&kube(TLS_SECRET_TYPE, &[("tls.key", KEY)])).unwrap_err();
        assert_eq!(
            err,
            CompileError::SecretKeyMissing {
                secret: "ns/tls".into(),
                key: "tls.crt"
            }
        );
        let err = secret(&kube(TLS_SECRET_TYPE, &[("tls.crt", CRT), ("tls.key", "")])).unwrap_err();
        assert_eq!(
            err,
            CompileError::SecretKeyMissing {
                secret: "ns/tls".into(),
                key: "tls.key"
            }
        );
        assert!(err.to_string().contains("tls.key is missing"));
    }

    #[test]
    fn non_pem_material_is_refused() {
        let err = secret(&kube(
            TLS_SECRET_TYPE,
            &[("tls.crt", "not a cert"), ("tls.key", KEY)],
        ))
        .unwrap_err();
        assert_eq!(
            err,
            CompileError::SecretNotPem {
                secret: "ns/tls".into(),
                key: "tls.crt",
                expected: "CERTIFICATE"
            }
        );
        // a certificate where the key should be
        let err = secret(&kube(
            TLS_SECRET_TYPE,
            &[("tls.crt", CRT), ("tls.key", CRT)],
        ))
        .unwrap_err();
        assert_eq!(
            err,
            CompileError::SecretNotPem {
                secret: "ns/tls".into(),
                key: "tls.key",
                expected: "PRIVATE KEY"
            }
        );
        // unterminated block
        let err = secret(&kube(
            TLS_SECRET_TYPE,
            &[
                ("tls.crt", "-----BEGIN CERTIFICATE-----\nabc\n"),
                ("tls.key", KEY),
            ],
        ))
        .unwrap_err();
        assert!(matches!(
            err,
            CompileError::SecretNotPem { key: "tls.crt", .. }
        ));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nabc\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = secret(&kube(
            TLS_SECRET_TYPE,
            &[("tls.crt", CRT), ("tls.key", encrypted)],
        ))
        .unwrap_err();
        assert_eq!(
            err,
            CompileError::SecretEncryptedKey {
                secret: "ns/tls".into()
            }
        );
    }

    #[test]
    fn pem_labels_for_keys() {
        for label in ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"] {
            let pem = format!("-----BEGIN {label}-----\nx\n-----END {label}-----\n");
            assert!(
                has_pem_block(pem.as_bytes(), |l| l.ends_with(b"PRIVATE KEY")),
                "{label}"
            );
        }
        // the certificate after another block (e.g. a chain with a leading key)
        let both = format!("{KEY}{CRT}");
        assert!(has_pem_block(both.as_bytes(), |l| l == b"CERTIFICATE"));
    }

    /// Issue 13: a megabyte of `-----BEGIN` lines stalled every update for
    /// 50 s (a rescan per marker). Too large is refused unread; up to the
    /// cap, one pass.
    #[test]
    fn hostile_pem_is_capped_and_scanned_once() {
        let flood = "-----BEGIN PRIVATE KEY-----\n".repeat((1 << 20) / 28);
        let err = secret(&kube(
            TLS_SECRET_TYPE,
            &[("tls.crt", CRT), ("tls.key", &flood)],
        ))
        .unwrap_err();
        assert_eq!(
            err,
            CompileError::SecretTooLarge {
                secret: "ns/tls".into(),
                key: "tls.key",
                size: flood.len(),
                max: MAX_PEM_BYTES,
            }
        );
        // Just under the cap: an answer (no END), in one pass.
        let under = &flood[..MAX_PEM_BYTES - MAX_PEM_BYTES % 28];
        assert!(!has_pem_block(under.as_bytes(), |l| l.ends_with(b"PRIVATE KEY")));
        let mut ended = under.to_string();
        ended.push_str("-----END PRIVATE KEY-----\r\n");
        assert!(has_pem_block(ended.as_bytes(), |l| l.ends_with(b"PRIVATE KEY")));
    }

    #[test]
    fn boundaries_are_whole_lines_and_labels_must_match() {
        let want = |l: &[u8]| l == b"CERTIFICATE";
        assert!(!has_pem_block(
            b"x-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n",
            want
        ));
        assert!(!has_pem_block(
            b"-----BEGIN CERTIFICATE-----\nA\n-----END X509 CRL-----\n",
            want
        ));
        assert!(has_pem_block(
            b"-----BEGIN CERTIFICATE-----  \r\nA\r\n-----END CERTIFICATE-----",
            want
        ));
        // A block of another label in between resets what is open.
        assert!(!has_pem_block(
            b"-----BEGIN CERTIFICATE-----\n-----BEGIN X-----\n-----END CERTIFICATE-----\n",
            want
        ));
    }
}
