//! Encode-once responses.
//!
//! A snapshot holds every resource already encoded (`Resource::body`). The
//! response types here are hand-written `prost::Message`s that write a
//! `DiscoveryResponse` / `DeltaDiscoveryResponse` straight onto the wire from
//! those shared bytes: the resource bodies are never decoded, re-encoded or
//! copied into per-stream `Any` values. `WireParts` splits a response around
//! each resource body, so that the response body (`body`) can hand large
//! bodies to HTTP/2 as the snapshot's own bytes and copy only the small
//! parts. A SotW response even borrows the whole snapshot (`Arc<Snapshot>`)
//! rather than a list of resources, so a push to a wildcard stream allocates
//! nothing but its nonce until it is written.
//!
//! The encoding is byte-for-byte what prost would produce for the generated
//! envoy-types messages (a test checks this), so any xDS client decodes it.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Buf, BufMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as ProtoResource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len, skip_field,
};
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder};

use super::snapshot::{Resource, Snapshot};

/// Which resources of one type a SotW response carries.
#[derive(Debug, Clone)]
pub(crate) enum Selection {
    /// Every resource of the type but the `named_only` ones (a wildcard
    /// subscription: API listeners are never sent to Envoy).
    All,
    /// A wildcard subscription that also names resources: everything `All`
    /// carries, plus the `named_only` resources it names.
    AllAnd(Arc<BTreeSet<String>>),
    /// The subscribed names that exist in the snapshot.
    Named(Arc<BTreeSet<String>>),
}

impl Selection {
    /// Whether a response with this selection carries `r`.
    pub(crate) fn includes(&self, r: &Resource) -> bool {
        match self {
            Selection::All => !r.named_only,
            Selection::AllAnd(names) => !r.named_only || names.contains(&r.name),
            Selection::Named(names) => names.contains(&r.name),
        }
    }
}

/// A state-of-the-world `DiscoveryResponse` whose resources are written from
/// the snapshot's pre-encoded bodies.
#[derive(Debug, Clone)]
pub struct SotwResponse {
    pub(crate) version_info: Arc<str>,
    pub(crate) type_url: Arc<str>,
    pub(crate) nonce: String,
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) selection: Selection,
}

impl SotwResponse {
    pub fn version_info(&self) -> &str {
        &self.version_info
    }

    pub fn type_url(&self) -> &str {
        &self.type_url
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The resources this response carries, in name order.
    pub fn resources(&self) -> impl Iterator<Item = &Arc<Resource>> + '_ {
        let of_type = self.snapshot.of_type(&self.type_url);
        let selection = &self.selection;
        let (all, named) = match selection {
            Selection::All | Selection::AllAnd(_) => (
                of_type.map(|m| m.values().filter(move |r| selection.includes(r))),
                None,
            ),
            Selection::Named(names) => (
                None,
                of_type.map(|m| names.iter().filter_map(move |n| m.get(n))),
            ),
        };
        all.into_iter().flatten().chain(named.into_iter().flatten())
    }

    /// The equivalent generated message. This copies every resource body into
    /// a fresh `Any`: it is what the envoy-types trait path has to do; the
    /// encode-once path writes `self` directly instead.
    pub fn to_proto(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.to_string(),
            resources: self.resources().map(|r| any_of(r)).collect(),
            type_url: self.type_url.to_string(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

/// An incremental `DeltaDiscoveryResponse` whose resources are written from
/// the snapshot's pre-encoded bodies.
#[derive(Debug, Clone)]
pub struct DeltaResponse {
    pub(crate) system_version_info: Arc<str>,
    pub(crate) type_url: Arc<str>,
    pub(crate) nonce: String,
    pub(crate) resources: Vec<Arc<Resource>>,
    pub(crate) removed: Vec<String>,
}

impl DeltaResponse {
    pub fn system_version_info(&self) -> &str {
        &self.system_version_info
    }

    pub fn type_url(&self) -> &str {
        &self.type_url
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    pub fn resources(&self) -> &[Arc<Resource>] {
        &self.resources
    }

    pub fn removed(&self) -> &[String] {
        &self.removed
    }

    /// The equivalent generated message (copies the bodies; see
    /// [`SotwResponse::to_proto`]).
    pub fn to_proto(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.to_string(),
            resources: self
                .resources
                .iter()
                .map(|r| ProtoResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(any_of(r)),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.to_string(),
            removed_resources: self.removed.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

fn any_of(r: &Resource) -> Any {
    Any {
        type_url: r.type_url.clone(),
        value: r.body.to_vec(),
    }
}

// ---- protobuf primitives -------------------------------------------------

/// Length of a length-delimited field with a payload of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Length of a proto3 string/bytes field (omitted when empty).
fn bytes_field_len(tag: u32, len: usize) -> usize {
    if len == 0 { 0 } else { delimited_len(tag, len) }
}

fn put_bytes_field(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.put_slice(value);
    }
}

/// `google.protobuf.Any { type_url = 1, value = 2 }` around the cached body.
fn any_len(r: &Resource) -> usize {
    bytes_field_len(1, r.type_url.len()) + bytes_field_len(2, r.body.len())
}

/// `envoy.service.discovery.v3.Resource { version = 1, resource = 2, name = 3 }`.
fn delta_resource_len(r: &Resource) -> usize {
    bytes_field_len(1, r.version.len())
        + delimited_len(2, any_len(r))
        + bytes_field_len(3, r.name.len())
}

/// A response as the gRPC body writes it: the fields around the resources,
/// and each resource as the bytes before its body, the body (the snapshot's
/// own `Bytes`, which the body hands to HTTP/2 without copying when it is
/// large) and the bytes after it. `prost::Message::encode_raw` is written
/// from the same parts, so the two cannot disagree.
pub(crate) trait WireParts: Send + Unpin + 'static {
    /// The length of the protobuf message, without gRPC's 5-byte prefix.
    fn message_len(&self) -> usize;
    /// The resources, in the order they are written.
    fn parts(&self) -> Vec<Arc<Resource>>;
    fn put_head(&self, buf: &mut impl BufMut);
    fn put_before_body(&self, r: &Resource, buf: &mut impl BufMut);
    fn put_after_body(&self, r: &Resource, buf: &mut impl BufMut);
    fn put_tail(&self, buf: &mut impl BufMut);
}

fn encode_parts(m: &impl WireParts, buf: &mut impl BufMut) {
    m.put_head(buf);
    for r in m.parts() {
        m.put_before_body(&r, buf);
        buf.put_slice(&r.body);
        m.put_after_body(&r, buf);
    }
    m.put_tail(buf);
}

/// The key and length of a bytes field whose value is written separately.
fn put_bytes_header(tag: u32, len: usize, buf: &mut impl BufMut) {
    if len != 0 {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    }
}

/// `Any` (field `tag`) up to its `value` bytes.
fn put_any_head(tag: u32, r: &Resource, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(any_len(r) as u64, buf);
    put_bytes_field(1, r.type_url.as_bytes(), buf);
    put_bytes_header(2, r.body.len(), buf);
}

// DiscoveryResponse: version_info = 1, resources = 2, type_url = 4, nonce = 5.
impl WireParts for SotwResponse {
    fn message_len(&self) -> usize {
        bytes_field_len(1, self.version_info.len())
            + self
                .resources()
                .map(|r| delimited_len(2, any_len(r)))
                .sum::<usize>()
            + bytes_field_len(4, self.type_url.len())
            + bytes_field_len(5, self.nonce.len())
    }

    fn parts(&self) -> Vec<Arc<Resource>> {
        self.resources().cloned().collect()
    }

    fn put_head(&self, buf: &mut impl BufMut) {
        put_bytes_field(1, self.version_info.as_bytes(), buf);
    }

    fn put_before_body(&self, r: &Resource, buf: &mut impl BufMut) {
        put_any_head(2, r, buf);
    }

    fn put_after_body(&self, _: &Resource, _: &mut impl BufMut) {}

    fn put_tail(&self, buf: &mut impl BufMut) {
        put_bytes_field(4, self.type_url.as_bytes(), buf);
        put_bytes_field(5, self.nonce.as_bytes(), buf);
    }
}

impl prost::Message for SotwResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_parts(self, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Encode-only: a server never decodes its own responses.
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.message_len()
    }

    fn clear(&mut self) {
        self.selection = Selection::Named(Arc::default());
        self.nonce.clear();
    }
}

// DeltaDiscoveryResponse: system_version_info = 1, resources = 2,
// type_url = 4, nonce = 5, removed_resources = 6.
impl WireParts for DeltaResponse {
    fn message_len(&self) -> usize {
        bytes_field_len(1, self.system_version_info.len())
            + self
                .resources
                .iter()
                .map(|r| delimited_len(2, delta_resource_len(r)))
                .sum::<usize>()
            + bytes_field_len(4, self.type_url.len())
            + bytes_field_len(5, self.nonce.len())
            + self
                .removed
                .iter()
                .map(|n| delimited_len(6, n.len()))
                .sum::<usize>()
    }

    fn parts(&self) -> Vec<Arc<Resource>> {
        self.resources.clone()
    }

    fn put_head(&self, buf: &mut impl BufMut) {
        put_bytes_field(1, self.system_version_info.as_bytes(), buf);
    }

    /// `Resource { version = 1, resource = 2 (Any), name = 3 }`: the name
    /// follows the body.
    fn put_before_body(&self, r: &Resource, buf: &mut impl BufMut) {
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(delta_resource_len(r) as u64, buf);
        put_bytes_field(1, r.version.as_bytes(), buf);
        put_any_head(2, r, buf);
    }

    fn put_after_body(&self, r: &Resource, buf: &mut impl BufMut) {
        put_bytes_field(3, r.name.as_bytes(), buf);
    }

    fn put_tail(&self, buf: &mut impl BufMut) {
        put_bytes_field(4, self.type_url.as_bytes(), buf);
        put_bytes_field(5, self.nonce.as_bytes(), buf);
        for name in &self.removed {
            // A repeated string is written even when empty.
            encode_key(6, WireType::LengthDelimited, buf);
            encode_varint(name.len() as u64, buf);
            buf.put_slice(name.as_bytes());
        }
    }
}

impl prost::Message for DeltaResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_parts(self, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.message_len()
    }

    fn clear(&mut self) {
        self.resources.clear();
        self.removed.clear();
        self.nonce.clear();
    }
}

// ---- codec ----------------------------------------------------------------

/// Decodes a request message `D` from a gRPC frame (tonic's `Streaming`
/// does the framing; responses are written by `body`).
pub(crate) struct WireDecoder<D>(PhantomData<fn() -> D>);

impl<D> Default for WireDecoder<D> {
    fn default() -> Self {
        WireDecoder(PhantomData)
    }
}

impl<D: prost::Message + Default> Decoder for WireDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// A state-of-the-world `DiscoveryRequest` whose `resource_names` stay on
/// the wire until needed.
///
/// Every SotW ACK repeats the whole subscription: an Envoy ACKing endpoints
/// names every cluster, 10k strings at 10k Services, on every stream, on
/// every push. Kept raw, an unchanged subscription is told apart by one
/// comparison of bytes, and no string is allocated. Decodes exactly the
/// fields of envoy's message; others are skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwRequest {
    pub version_info: String,
    pub node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
    pub resource_names: RawNames,
    pub type_url: String,
    pub response_nonce: String,
    pub error_detail: Option<envoy_types::pb::google::rpc::Status>,
    pub resource_locators: Vec<envoy_types::pb::envoy::service::discovery::v3::ResourceLocator>,
}

/// Repeated strings as they came: each one's length (varint) then its bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawNames(Vec<u8>);

impl RawNames {
    /// The names, borrowed from the raw bytes (validated as UTF-8 when
    /// decoded).
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let mut rest: &[u8] = &self.0;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let len = prost::encoding::decode_varint(&mut rest).ok()? as usize;
            let (name, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            std::str::from_utf8(name).ok()
        })
    }

    fn push(&mut self, name: &[u8]) {
        encode_varint(name.len() as u64, &mut self.0);
        self.0.extend_from_slice(name);
    }
}

impl FromIterator<String> for RawNames {
    fn from_iter<I: IntoIterator<Item = String>>(names: I) -> Self {
        let mut raw = RawNames::default();
        for n in names {
            raw.push(n.as_bytes());
        }
        raw
    }
}

impl From<envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest> for SotwRequest {
    fn from(r: envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest) -> Self {
        SotwRequest {
            version_info: r.version_info,
            node: r.node,
            resource_names: r.resource_names.into_iter().collect(),
            type_url: r.type_url,
            response_nonce: r.response_nonce,
            error_detail: r.error_detail,
            resource_locators: r.resource_locators,
        }
    }
}

/// prost's error for a string field that is not UTF-8, made by prost.
fn not_utf8() -> prost::DecodeError {
    let mut s = String::new();
    let bad: &[u8] = &[1, 0xff];
    prost::encoding::string::merge(
        WireType::LengthDelimited,
        &mut s,
        &mut &bad[..],
        DecodeContext::default(),
    )
    .expect_err("0xff is not UTF-8")
}

/// prost's error for a length past the end of the buffer, made by prost.
fn underflow() -> prost::DecodeError {
    prost::encoding::bytes::merge(
        WireType::LengthDelimited,
        &mut Vec::new(),
        &mut &[1u8][..],
        DecodeContext::default(),
    )
    .expect_err("one byte promised, none there")
}

impl prost::Message for SotwRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        use prost::encoding::{message, string};
        if !self.version_info.is_empty() {
            string::encode(1, &self.version_info, buf);
        }
        if let Some(node) = &self.node {
            message::encode(2, node, buf);
        }
        for name in self.resource_names.iter() {
            encode_key(3, WireType::LengthDelimited, buf);
            encode_varint(name.len() as u64, buf);
            buf.put_slice(name.as_bytes());
        }
        if !self.type_url.is_empty() {
            string::encode(4, &self.type_url, buf);
        }
        if !self.response_nonce.is_empty() {
            string::encode(5, &self.response_nonce, buf);
        }
        if let Some(e) = &self.error_detail {
            message::encode(6, e, buf);
        }
        message::encode_repeated(7, &self.resource_locators, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        use prost::encoding::{message, string};
        match tag {
            1 => string::merge(wire_type, &mut self.version_info, buf, ctx),
            2 => message::merge(
                wire_type,
                self.node.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            3 => {
                // Straight onto the raw list: one copy, no string made.
                prost::encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                let len = prost::encoding::decode_varint(buf)?;
                if len as usize > buf.remaining() {
                    return Err(underflow());
                }
                let raw = &mut self.resource_names.0;
                let start = raw.len();
                encode_varint(len, raw);
                let at = raw.len();
                raw.put(buf.take(len as usize));
                if std::str::from_utf8(&raw[at..]).is_err() {
                    raw.truncate(start);
                    return Err(not_utf8());
                }
                Ok(())
            }
            4 => string::merge(wire_type, &mut self.type_url, buf, ctx),
            5 => string::merge(wire_type, &mut self.response_nonce, buf, ctx),
            6 => message::merge(
                wire_type,
                self.error_detail.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            7 => message::merge_repeated(wire_type, &mut self.resource_locators, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{message, string};
        let names: usize = self
            .resource_names
            .iter()
            .map(|n| key_len(3) + encoded_len_varint(n.len() as u64) + n.len())
            .sum();
        (if self.version_info.is_empty() {
            0
        } else {
            string::encoded_len(1, &self.version_info)
        }) + self.node.as_ref().map_or(0, |n| message::encoded_len(2, n))
            + names
            + (if self.type_url.is_empty() {
                0
            } else {
                string::encoded_len(4, &self.type_url)
            })
            + (if self.response_nonce.is_empty() {
                0
            } else {
                string::encoded_len(5, &self.response_nonce)
            })
            + self
                .error_detail
                .as_ref()
                .map_or(0, |e| message::encoded_len(6, e))
            + message::encoded_len_repeated(7, &self.resource_locators)
    }

    fn clear(&mut self) {
        *self = SotwRequest::default();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_sotw_request_decodes_as_envoys_message_does_and_keeps_names_raw() {
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
        use prost::Message;
        let envoy = DiscoveryRequest {
            version_info: "7".into(),
            node: Some(envoy_types::pb::envoy::config::core::v3::Node {
                id: "envoy-1".into(),
                ..Default::default()
            }),
            resource_names: vec!["a".into(), "é/b".into(), String::new(), "c".repeat(300)],
            type_url: "t".into(),
            response_nonce: "n".into(),
            error_detail: Some(envoy_types::pb::google::rpc::Status {
                code: 3,
                message: "bad".into(),
                details: vec![],
            }),
            ..Default::default()
        };
        let wire = envoy.encode_to_vec();
        let ours = SotwRequest::decode(&wire[..]).unwrap();
        assert_eq!(ours, SotwRequest::from(envoy.clone()));
        let names: Vec<&str> = ours.resource_names.iter().collect();
        assert_eq!(names, envoy.resource_names);
        // And back: byte for byte what envoy's type writes.
        assert_eq!(ours.encode_to_vec(), wire);
        assert_eq!(ours.encoded_len(), wire.len());
        // Not UTF-8: refused, as prost refuses it for a string field.
        let mut bad = Vec::new();
        encode_key(3, WireType::LengthDelimited, &mut bad);
        encode_varint(1, &mut bad);
        bad.push(0xff);
        assert!(SotwRequest::decode(&bad[..]).is_err());
        // A length past the end, and the wrong wire type: refused too.
        let mut short = Vec::new();
        encode_key(3, WireType::LengthDelimited, &mut short);
        encode_varint(5, &mut short);
        short.extend_from_slice(b"ab");
        assert!(SotwRequest::decode(&short[..]).is_err());
        let mut varint = Vec::new();
        encode_key(3, WireType::Varint, &mut varint);
        encode_varint(5, &mut varint);
        assert!(SotwRequest::decode(&varint[..]).is_err());
    }
    use crate::xds::snapshot::type_url;
    use prost::Message;

    /// A snapshot of clusters with bodies of the given lengths (shared with
    /// the response body's tests).
    pub(crate) fn clusters(bodies: &[(&str, usize)]) -> Arc<Snapshot> {
        let mut snap = Snapshot {
            version: 7,
            ..Default::default()
        };
        for (name, len) in bodies {
            let body: Vec<u8> = (0..*len).map(|i| (i % 251) as u8).collect();
            let r = Resource::new(type_url::CLUSTER, name.to_string(), body.into(), vec![]);
            snap.resources
                .entry(type_url::CLUSTER.to_string())
                .or_default()
                .insert(name.to_string(), Arc::new(r));
        }
        Arc::new(snap)
    }

    fn snapshot() -> Arc<Snapshot> {
        // A large body, so that lengths need multi-byte varints.
        clusters(&[("a", 3), ("b", 0), ("c", 3), (&"z".repeat(200), 70_000)])
    }

    #[test]
    fn sotw_wire_matches_prost() {
        let snap = snapshot();
        for selection in [
            Selection::All,
            Selection::Named(Arc::new(
                ["a".to_string(), "missing".to_string(), "z".repeat(200)].into(),
            )),
            Selection::Named(Arc::default()),
        ] {
            let resp = SotwResponse {
                version_info: "7".into(),
                type_url: type_url::CLUSTER.into(),
                nonce: "42".into(),
                snapshot: snap.clone(),
                selection,
            };
            let ours = resp.encode_to_vec();
            assert_eq!(ours.len(), resp.encoded_len());
            assert_eq!(ours, resp.to_proto().encode_to_vec());
            let back = DiscoveryResponse::decode(&ours[..]).unwrap();
            assert_eq!(back, resp.to_proto());
        }
    }

    #[test]
    fn delta_wire_matches_prost() {
        let snap = snapshot();
        let resp = DeltaResponse {
            system_version_info: "7".into(),
            type_url: type_url::CLUSTER.into(),
            nonce: "3".into(),
            resources: snap
                .of_type(type_url::CLUSTER)
                .unwrap()
                .values()
                .cloned()
                .collect(),
            removed: vec!["gone".into(), String::new()],
        };
        let ours = resp.encode_to_vec();
        assert_eq!(ours.len(), resp.encoded_len());
        assert_eq!(ours, resp.to_proto().encode_to_vec());
        assert_eq!(
            DeltaDiscoveryResponse::decode(&ours[..]).unwrap(),
            resp.to_proto()
        );
    }
}
