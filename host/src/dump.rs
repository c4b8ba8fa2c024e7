//! Envoy resources as JSON, the way Envoy prints them.
//!
//! Snapshots keep every resource as its protobuf encoding. This module turns
//! those bytes back into the proto3 JSON mapping, with `"@type"` for every
//! `Any` (and for the resource itself), like `envoy admin config_dump` and
//! `egctl x translate -o json`. It backs `isobar translate` and the config
//! dump endpoint.
//!
//! envoy-types has no reflection, so `build.rs` compiles the descriptors of
//! the resources we serve and of everything we pack into an `Any` from the
//! `.proto` files envoy-types ships, and this module reads them with
//! prost-reflect.
//!
//! What is printed:
//! - Field names are lowerCamelCase (the proto3 JSON mapping, as `egctl`
//!   prints); [`FieldNames::Proto`] prints Envoy admin's snake_case instead.
//!   Default values are left out, 64-bit integers are strings, enums are
//!   names.
//! - Key material is never printed. As in Envoy's config dump, every field
//!   annotated `(udpa.annotations.sensitive)` (a certificate's private key,
//!   PKCS#12 bundle and password, session ticket keys, generic secrets, …) is
//!   redacted, wherever it sits, inside `Any`s too: every string and bytes
//!   field under it becomes `"[redacted]"`, any other value is dropped.
//! - An `Any` whose type isn't among the compiled descriptors (a raw resource
//!   from a plugin, say) prints as `{"@type": …, "@unprintable": "…"}`; its
//!   bytes are not shown, as they might hold secrets.
//! - Object keys come out in `serde_json`'s order: sorted, unless its
//!   `preserve_order` feature is on. `"@type"` sorts first either way.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, SerializeOptions, Value};
use serde_json::{Map, Value as Json};

use crate::xds::snapshot::{Snapshot, type_url};

/// The encoded `FileDescriptorSet` from `build.rs`; empty if it could not
/// find the protos.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));
/// What `build.rs` did, or why it could not.
const DESCRIPTORS_STATUS: &str =
    include_str!(concat!(env!("OUT_DIR"), "/envoy_descriptors.status"));

/// What redacted values print as.
pub const REDACTED: &str = "[redacted]";

const ANY: &str = "google.protobuf.Any";
const STRUCT_URL: &str = "type.googleapis.com/google.protobuf.Struct";
const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// Redacted bytes fields hold this, so that their base64 can be told from any
/// real value and printed as [`REDACTED`].
const REDACTED_BYTES: &[u8] = b"\0isobar:redacted\0";
const REDACTED_BYTES_BASE64: &str = "AGlzb2JhcjpyZWRhY3RlZAA=";
/// An `Any` we can't print is replaced by a `Struct` with this key.
const UNPRINTABLE_MARKER: &str = "\0isobar:unprintable";

/// Fields redacted even if the descriptors lose their annotations.
const ALWAYS_SENSITIVE: &[&str] = &[
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate.private_key",
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate.pkcs12",
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate.password",
    "envoy.extensions.transport_sockets.tls.v3.TlsSessionTicketKeys.keys",
    "envoy.extensions.transport_sockets.tls.v3.GenericSecret.secret",
    "envoy.extensions.transport_sockets.tls.v3.GenericSecret.secrets",
];

/// How JSON field names are spelled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FieldNames {
    /// lowerCamelCase, the proto3 JSON mapping (`routeConfigName`), as
    /// `egctl` and protojson print.
    #[default]
    Json,
    /// The names in the `.proto` files (`route_config_name`), as Envoy's
    /// admin `/config_dump` prints.
    Proto,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonOptions {
    pub field_names: FieldNames,
}

/// One resource (`body` is its protobuf encoding, not wrapped in an `Any`) as
/// proto3 JSON, `"@type": type_url` first. `type_url` may also be a bare
/// message name. Fails if the type is unknown or the body doesn't decode.
pub fn resource_to_json(type_url: &str, body: &[u8]) -> Result<Json> {
    resource_to_json_with(type_url, body, JsonOptions::default())
}

pub fn resource_to_json_with(type_url: &str, body: &[u8], options: JsonOptions) -> Result<Json> {
    let d = descriptors()?;
    let type_url = if type_url.contains('/') {
        type_url.to_string()
    } else {
        format!("{TYPE_URL_PREFIX}{type_url}")
    };
    let name = message_name(&type_url).to_string();
    let desc = d.pool.get_message_by_name(&name).ok_or_else(|| {
        anyhow!("cannot print {name}: it is not among the Envoy types isobar was built to print")
    })?;
    let mut msg = DynamicMessage::decode(desc, body).with_context(|| format!("decoding {name}"))?;
    d.prepare(&mut msg, false);

    // Printed as an Any, so that "@type" comes first.
    let any = prost_types::Any {
        type_url,
        value: msg.encode_to_vec(),
    };
    let any = DynamicMessage::decode(d.any.clone(), any.encode_to_vec().as_slice())?;
    let serialize =
        SerializeOptions::new().use_proto_field_name(options.field_names == FieldNames::Proto);
    let mut json = any
        .serialize_with_options(serde_json::value::Serializer, &serialize)
        .with_context(|| format!("printing {name}"))?;
    fix_up(&mut json);
    Ok(json)
}

/// A whole snapshot, grouped like Envoy's config dump:
/// `{"version": N, "resources": {"listeners": [..], "routes": [..],
/// "clusters": [..], "endpoints": [..], "secrets": [..]}}`, each list in name
/// order, secrets redacted. Resources of any other type go to `"other"`
/// (present only if there are some).
///
/// Fails only if isobar has no descriptors at all: a resource that can't be
/// printed shows as `{"@type", "name", "@error"}`, so one bad resource
/// doesn't hide the rest.
pub fn snapshot_to_json(snapshot: &Snapshot) -> Result<Json> {
    snapshot_to_json_with(snapshot, JsonOptions::default())
}

pub fn snapshot_to_json_with(snapshot: &Snapshot, options: JsonOptions) -> Result<Json> {
    descriptors()?;
    let mut groups: BTreeMap<&str, Vec<Json>> = GROUPS
        .iter()
        .map(|(_, group)| (*group, Vec::new()))
        .collect();
    for (type_url, resources) in &snapshot.resources {
        let group = GROUPS
            .iter()
            .find(|(url, _)| url == type_url)
            .map_or("other", |(_, group)| *group);
        let list = groups.entry(group).or_default();
        for resource in resources.values() {
            list.push(
                resource_to_json_with(&resource.type_url, &resource.body, options).unwrap_or_else(
                    |e| {
                        serde_json::json!({
                            "@type": resource.type_url,
                            "name": resource.name,
                            "@error": format!("{e:#}"),
                        })
                    },
                ),
            );
        }
    }
    // In the config dump's order (kept if serde_json preserves insertion order).
    let mut resources = Map::new();
    for (_, group) in GROUPS.iter().chain([&("", "other")]) {
        if let Some(list) = groups.remove(group) {
            resources.insert(group.to_string(), Json::Array(list));
        }
    }
    Ok(serde_json::json!({ "version": snapshot.version, "resources": resources }))
}

const GROUPS: [(&str, &str); 5] = [
    (type_url::LISTENER, "listeners"),
    (type_url::ROUTE, "routes"),
    (type_url::CLUSTER, "clusters"),
    (type_url::ENDPOINT, "endpoints"),
    (type_url::SECRET, "secrets"),
];

/// How the descriptors were built (for `--version`-style diagnostics).
pub fn descriptors_status() -> &'static str {
    DESCRIPTORS_STATUS
}

struct Descriptors {
    pool: DescriptorPool,
    any: prost_reflect::MessageDescriptor,
    /// Full names of the fields to redact.
    sensitive: HashSet<String>,
}

fn descriptors() -> Result<&'static Descriptors> {
    static DESCRIPTORS_POOL: OnceLock<Result<Descriptors, String>> = OnceLock::new();
    DESCRIPTORS_POOL
        .get_or_init(|| load(DESCRIPTORS, DESCRIPTORS_STATUS))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn load(bytes: &[u8], status: &str) -> Result<Descriptors, String> {
    if bytes.is_empty() {
        return Err(format!(
            "this isobar was built without Envoy protobuf descriptors and cannot print Envoy \
             resources as JSON: {status}"
        ));
    }
    let pool =
        DescriptorPool::decode(bytes).map_err(|e| format!("isobar's Envoy descriptors: {e}"))?;
    let any = pool
        .get_message_by_name(ANY)
        .ok_or("isobar's Envoy descriptors lack google.protobuf.Any")?;
    let mut sensitive: HashSet<String> = ALWAYS_SENSITIVE.iter().map(|f| f.to_string()).collect();
    if let Some(annotation) = pool.get_extension_by_name("udpa.annotations.sensitive") {
        for message in pool.all_messages() {
            for field in message.fields() {
                let options = field.options();
                if options.has_extension(&annotation)
                    && options.get_extension(&annotation).as_bool() == Some(true)
                {
                    sensitive.insert(field.full_name().to_string());
                }
            }
        }
    }
    Ok(Descriptors {
        pool,
        any,
        sensitive,
    })
}

impl Descriptors {
    /// Redacts sensitive fields and makes every `Any` printable, all the way
    /// down. `redact_all`: we are under a sensitive field.
    fn prepare(&self, msg: &mut DynamicMessage, redact_all: bool) {
        if msg.descriptor().full_name() == ANY {
            return self.prepare_any(msg, redact_all);
        }
        let mut drop = Vec::new();
        for (field, value) in msg.fields_mut() {
            let sensitive = redact_all || self.sensitive.contains(field.full_name());
            if !self.prepare_value(value, sensitive) {
                drop.push(field);
            }
        }
        for field in drop {
            msg.clear_field(&field);
        }
    }

    /// Returns false if the field holding `value` must be dropped.
    fn prepare_value(&self, value: &mut Value, sensitive: bool) -> bool {
        match value {
            Value::Message(msg) => self.prepare(msg, sensitive),
            Value::List(items) => {
                return items
                    .iter_mut()
                    .all(|item| self.prepare_value(item, sensitive));
            }
            Value::Map(entries) => {
                return entries
                    .values_mut()
                    .all(|v| self.prepare_value(v, sensitive));
            }
            Value::String(s) if sensitive => *s = REDACTED.to_string(),
            Value::Bytes(b) if sensitive => *b = bytes::Bytes::from_static(REDACTED_BYTES),
            _ if sensitive => return false,
            _ => {}
        }
        true
    }

    /// Prepares what an `Any` holds and packs it again, or, if we can't
    /// print it, replaces it with the unprintable marker.
    fn prepare_any(&self, msg: &mut DynamicMessage, redact_all: bool) {
        let Ok(any) = msg.transcode_to::<prost_types::Any>() else {
            return self.replace_unprintable(msg, "", 0, "malformed Any");
        };
        let name = message_name(&any.type_url);
        let Some(desc) = self
            .pool
            .get_message_by_name(name)
            .filter(|_| any.type_url.contains('/'))
        else {
            return self.replace_unprintable(
                msg,
                &any.type_url,
                any.value.len(),
                "type not among the Envoy types isobar was built to print",
            );
        };
        match DynamicMessage::decode(desc, any.value.as_slice()) {
            Ok(mut inner) => {
                self.prepare(&mut inner, redact_all);
                let packed = prost_types::Any {
                    type_url: any.type_url,
                    value: inner.encode_to_vec(),
                };
                // Both sides are Anys: this can't fail.
                msg.transcode_from(&packed).expect("Any to Any");
            }
            Err(e) => self.replace_unprintable(
                msg,
                &any.type_url,
                any.value.len(),
                &format!("does not decode: {e}"),
            ),
        }
    }

    fn replace_unprintable(&self, msg: &mut DynamicMessage, type_url: &str, len: usize, why: &str) {
        use prost_types::value::Kind;
        let string = |s: String| prost_types::Value {
            kind: Some(Kind::StringValue(s)),
        };
        let marker = prost_types::Struct {
            fields: [
                (UNPRINTABLE_MARKER.to_string(), string(type_url.to_string())),
                (
                    "why".to_string(),
                    string(format!("{why}; {len} bytes not shown")),
                ),
            ]
            .into(),
        };
        let packed = prost_types::Any {
            type_url: STRUCT_URL.to_string(),
            value: marker.encode_to_vec(),
        };
        msg.transcode_from(&packed).expect("Any to Any");
    }
}

/// The message name in a type URL: what follows the last `/`.
fn message_name(type_url: &str) -> &str {
    type_url.rsplit_once('/').map_or(type_url, |(_, name)| name)
}

/// Prints the redaction and unprintable markers [`Descriptors::prepare`] left
/// in the JSON.
fn fix_up(json: &mut Json) {
    match json {
        Json::String(s) if s == REDACTED_BYTES_BASE64 => *s = REDACTED.to_string(),
        Json::Array(items) => items.iter_mut().for_each(fix_up),
        Json::Object(fields) => {
            if let Some(unprintable) = unprintable(fields) {
                *json = unprintable;
            } else {
                fields.values_mut().for_each(fix_up);
            }
        }
        _ => {}
    }
}

/// `{"@type": Struct, "value": {MARKER: url, "why": ..}}` →
/// `{"@type": url, "@unprintable": why}`.
fn unprintable(fields: &Map<String, Json>) -> Option<Json> {
    if fields.get("@type")?.as_str()? != STRUCT_URL {
        return None;
    }
    let value = fields.get("value")?.as_object()?;
    let type_url = value.get(UNPRINTABLE_MARKER)?.clone();
    let why = value.get("why").cloned().unwrap_or(Json::Null);
    let mut out = Map::new();
    out.insert("@type".to_string(), type_url);
    out.insert("@unprintable".to_string(), why);
    Some(Json::Object(out))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, Http2ProtocolOptions,
        TransportSocket, config_source, data_source, transport_socket,
    };
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, GenericSecret, Secret, TlsCertificate, secret,
    };
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions, http_protocol_options,
    };
    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::xds::snapshot::Resource;

    const HCM_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";

    fn any<M: prost::Message + prost::Name>(msg: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: msg.encode_to_vec(),
        }
    }

    fn ads() -> ConfigSource {
        ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                AggregatedConfigSource {},
            )),
            ..Default::default()
        }
    }

    fn private_key(specifier: data_source::Specifier) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(specifier),
            ..Default::default()
        })
    }

    fn listener(transport_socket: Option<TransportSocket>) -> Listener {
        let hcm = HttpConnectionManager {
            stat_prefix: "http".into(),
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: "http-8080".into(),
            })),
            http_filters: vec![HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(
                    any(&Router::default()),
                )),
                ..Default::default()
            }],
            ..Default::default()
        };
        Listener {
            name: "http-8080".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
                }],
                transport_socket,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn cluster() -> Cluster {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            )),
            ..Default::default()
        };
        Cluster {
            name: "default/echo/8080".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: "default/echo/8080".into(),
            }),
            typed_extension_protocol_options: [(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
                any(&options),
            )]
            .into(),
            ..Default::default()
        }
    }

    fn tls_secret(specifier: data_source::Specifier) -> Secret {
        Secret {
            name: "default/tls".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: private_key(data_source::Specifier::InlineString("CERT".into())),
                private_key: private_key(specifier),
                ..Default::default()
            })),
        }
    }

    fn render<M: prost::Message + prost::Name>(msg: &M) -> Json {
        resource_to_json(&M::type_url(), &msg.encode_to_vec()).unwrap()
    }

    /// No key material anywhere in the output, however it is spelled.
    fn assert_no_key(json: &Json) {
        let text = json.to_string();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        let base64_of_key = "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0t";
        assert!(!text.contains(base64_of_key), "{text}");
    }

    #[test]
    fn descriptors_were_built() {
        assert!(!DESCRIPTORS.is_empty(), "{}", descriptors_status());
        let d = descriptors().unwrap();
        // Sensitive fields come from the protos' annotations, not only from
        // our own list.
        let annotated = "envoy.config.core.v3.GrpcService.GoogleGrpc.SslCredentials.private_key";
        assert!(!ALWAYS_SENSITIVE.contains(&annotated));
        assert!(d.sensitive.contains(annotated), "{:?}", d.sensitive);
    }

    #[test]
    fn no_descriptors_is_a_clear_error() {
        let Err(e) = load(b"", "envoy-types-0.7.7/proto not found") else {
            panic!("loaded nothing")
        };
        assert!(
            e.contains("built without Envoy protobuf descriptors"),
            "{e}"
        );
        assert!(e.contains("proto not found"), "{e}");
    }

    #[test]
    fn listener_prints_with_its_http_connection_manager() {
        let json = render(&listener(None));
        assert_eq!(json["@type"], type_url::LISTENER);
        assert_eq!(json["name"], "http-8080");
        let filter = &json["filterChains"][0]["filters"][0];
        assert_eq!(
            filter["name"],
            "envoy.filters.network.http_connection_manager"
        );
        let hcm = &filter["typedConfig"];
        assert_eq!(hcm["@type"], HCM_URL);
        assert_eq!(hcm["statPrefix"], "http");
        assert_eq!(hcm["rds"]["routeConfigName"], "http-8080");
        assert_eq!(hcm["rds"]["configSource"]["resourceApiVersion"], "V3");
        assert!(
            hcm["rds"]["configSource"]["ads"]
                .as_object()
                .unwrap()
                .is_empty()
        );
        let router = &hcm["httpFilters"][0]["typedConfig"];
        assert_eq!(
            router,
            &serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"})
        );
        // "@type" first, as Envoy prints it.
        assert_eq!(json.as_object().unwrap().keys().next().unwrap(), "@type");
        assert_eq!(hcm.as_object().unwrap().keys().next().unwrap(), "@type");
    }

    #[test]
    fn proto_field_names_like_envoy_admin() {
        let msg = listener(None);
        let options = JsonOptions {
            field_names: FieldNames::Proto,
        };
        let json =
            resource_to_json_with(type_url::LISTENER, &msg.encode_to_vec(), options).unwrap();
        let hcm = &json["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(hcm["rds"]["route_config_name"], "http-8080");
        // A bare message name works too.
        let bare =
            resource_to_json("envoy.config.listener.v3.Listener", &msg.encode_to_vec()).unwrap();
        assert_eq!(bare, render(&msg));
    }

    #[test]
    fn cluster_prints_its_protocol_options() {
        let json = render(&cluster());
        assert_eq!(json["@type"], type_url::CLUSTER);
        assert_eq!(json["type"], "EDS");
        assert_eq!(json["edsClusterConfig"]["serviceName"], "default/echo/8080");
        let options = &json["typedExtensionProtocolOptions"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(
            options["@type"],
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        );
        assert!(
            options["explicitHttpConfig"]["http2ProtocolOptions"].is_object(),
            "{options}"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        for specifier in [
            data_source::Specifier::InlineBytes(KEY.as_bytes().to_vec()),
            data_source::Specifier::InlineString(KEY.into()),
        ] {
            let json = render(&tls_secret(specifier));
            assert_no_key(&json);
            let key = json["tlsCertificate"]["privateKey"].as_object().unwrap();
            assert_eq!(key.len(), 1, "{key:?}");
            assert!(key.values().all(|v| v == REDACTED), "{key:?}");
            // The certificate is not secret.
            assert_eq!(
                json["tlsCertificate"]["certificateChain"]["inlineString"],
                "CERT"
            );
        }
        let json = render(&tls_secret(data_source::Specifier::InlineBytes(
            KEY.as_bytes().to_vec(),
        )));
        assert_eq!(
            json["tlsCertificate"]["privateKey"]["inlineBytes"],
            REDACTED
        );

        let generic = Secret {
            name: "hmac".into(),
            r#type: Some(secret::Type::GenericSecret(GenericSecret {
                secret: private_key(data_source::Specifier::InlineBytes(KEY.as_bytes().to_vec())),
                ..Default::default()
            })),
        };
        let json = render(&generic);
        assert_no_key(&json);
        assert_eq!(json["genericSecret"]["secret"]["inlineBytes"], REDACTED);
    }

    #[test]
    fn keys_inside_anys_are_redacted() {
        let tls = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    private_key: private_key(data_source::Specifier::InlineString(KEY.into())),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = render(&listener(Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(&tls))),
        })));
        assert_no_key(&json);
        let tls = &json["filterChains"][0]["transportSocket"]["typedConfig"];
        assert_eq!(
            tls["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
        );
        assert_eq!(
            tls["commonTlsContext"]["tlsCertificates"][0]["privateKey"]["inlineString"],
            REDACTED
        );
    }

    #[test]
    fn unknown_anys_are_named_not_shown() {
        let mut msg = listener(None);
        msg.filter_chains[0].filters[0].config_type = Some(filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/example.v1.Secretive".into(),
            value: KEY.as_bytes().to_vec(),
        }));
        let json = render(&msg);
        assert_no_key(&json);
        let config = &json["filterChains"][0]["filters"][0]["typedConfig"];
        assert_eq!(config["@type"], "type.googleapis.com/example.v1.Secretive");
        assert!(
            config["@unprintable"]
                .as_str()
                .unwrap()
                .contains("bytes not shown"),
            "{config}"
        );
        assert_eq!(config.as_object().unwrap().len(), 2);
    }

    #[test]
    fn unknown_and_malformed_resources_fail() {
        let err = resource_to_json("type.googleapis.com/example.v1.Thing", b"").unwrap_err();
        assert!(err.to_string().contains("example.v1.Thing"), "{err}");
        assert!(resource_to_json(type_url::LISTENER, b"\xff\xff\xff").is_err());
    }

    #[test]
    fn snapshot_is_grouped_like_a_config_dump() {
        let mut snapshot = Snapshot {
            version: 7,
            ..Default::default()
        };
        let mut add = |resource: Resource| {
            snapshot
                .resources
                .entry(resource.type_url.clone())
                .or_default()
                .insert(resource.name.clone(), Arc::new(resource));
        };
        add(Resource::encode(
            type_url::LISTENER,
            "http-8080".into(),
            &listener(None),
            vec![],
        ));
        add(Resource::encode(
            type_url::CLUSTER,
            "default/echo/8080".into(),
            &cluster(),
            vec![],
        ));
        add(Resource::encode(
            type_url::SECRET,
            "default/tls".into(),
            &tls_secret(data_source::Specifier::InlineBytes(KEY.as_bytes().to_vec())),
            vec![],
        ));
        add(Resource::new(
            type_url::ROUTE,
            "broken".into(),
            bytes::Bytes::from_static(b"\xff\xff\xff"),
            vec![],
        ));

        let json = snapshot_to_json(&snapshot).unwrap();
        assert_no_key(&json);
        assert_eq!(json["version"], 7);
        let resources = json["resources"].as_object().unwrap();
        let mut groups: Vec<&str> = resources.keys().map(String::as_str).collect();
        groups.sort();
        assert_eq!(
            groups,
            ["clusters", "endpoints", "listeners", "routes", "secrets"]
        );
        assert_eq!(
            resources["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"]["@type"],
            HCM_URL
        );
        assert_eq!(resources["clusters"][0]["name"], "default/echo/8080");
        assert_eq!(resources["endpoints"], serde_json::json!([]));
        assert_eq!(
            resources["secrets"][0]["tlsCertificate"]["privateKey"]["inlineBytes"],
            REDACTED
        );
        // One broken resource is reported, not fatal.
        assert_eq!(resources["routes"][0]["name"], "broken");
        assert!(resources["routes"][0]["@error"].is_string());
    }

    #[test]
    fn redacted_bytes_marker_is_what_we_match() {
        let bytes = envoy_types::pb::google::protobuf::BytesValue {
            value: REDACTED_BYTES.to_vec(),
        };
        let json = resource_to_json("google.protobuf.BytesValue", &bytes.encode_to_vec());
        // BytesValue itself isn't sensitive: its base64 is the marker, which
        // fix_up prints as "[redacted]".
        assert_eq!(json.unwrap()["value"], REDACTED);
        let d = descriptors().unwrap();
        let desc = d
            .pool
            .get_message_by_name("google.protobuf.BytesValue")
            .unwrap();
        let msg = DynamicMessage::decode(desc, bytes.encode_to_vec().as_slice()).unwrap();
        let raw = msg
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .unwrap();
        assert_eq!(raw, REDACTED_BYTES_BASE64);
    }
}
