//! Kubernetes objects as they cross the boundary: JSON plus the host's index.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{Error, Object, ObjectRef};

impl Object {
    /// Builds an object from its Kubernetes JSON. `apiVersion` and `kind` are
    /// required; namespace, name and uid default to empty.
    pub fn from_json(value: serde_json::Value) -> Result<Object, Error> {
        let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
        let field = |key: &str| text(value.get(key));
        let meta = |key: &str| text(value.get("metadata").and_then(|m| m.get(key)));
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            return Err(Error::new(
                "InvalidObject",
                "object has no apiVersion or kind",
            ));
        };
        Ok(Object {
            api_version,
            kind,
            namespace: meta("namespace").unwrap_or_default(),
            name: meta("name").unwrap_or_default(),
            uid: meta("uid").unwrap_or_default(),
            json: value.to_string(),
        })
    }

    /// Like [`Object::from_json`], from JSON text.
    pub fn from_json_str(json: &str) -> Result<Object, Error> {
        let value = serde_json::from_str(json)
            .map_err(|e| Error::new("InvalidObject", format!("invalid JSON: {e}")))?;
        Object::from_json(value)
    }

    /// Builds an object from a typed k8s-openapi resource.
    pub fn from_resource<K>(resource: &K) -> Object
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize,
    {
        let meta = resource.metadata();
        Object {
            api_version: K::API_VERSION.to_owned(),
            kind: K::KIND.to_owned(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            // k8s-openapi types always serialise (their serializers cannot
            // fail), and the output carries apiVersion and kind.
            json: serde_json::to_string(resource).expect("k8s-openapi resources serialise"),
        }
    }

    /// Parses the body into a typed resource, e.g. `root.parse::<Ingress>()`.
    pub fn parse<K: DeserializeOwned>(&self) -> Result<K, Error> {
        serde_json::from_str(&self.json).map_err(|e| {
            Error::new(
                "InvalidObject",
                format!(
                    "{} {}: cannot parse {}: {e}",
                    self.kind,
                    self.display_name(),
                    std::any::type_name::<K>()
                        .rsplit("::")
                        .next()
                        .unwrap_or("object"),
                ),
            )
        })
    }

    /// The body as untyped JSON.
    pub fn value(&self) -> Result<serde_json::Value, Error> {
        self.parse()
    }

    /// Whether this object is of the given k8s-openapi kind.
    pub fn is<K: Resource>(&self) -> bool {
        self.api_version == K::API_VERSION && self.kind == K::KIND
    }

    /// A reference to this object, for diagnostics.
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::of(&self.api_version, &self.kind, &self.namespace, &self.name)
    }

    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub fn display_name(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

impl Error {
    /// `reason` is CamelCase and machine-readable, e.g. "InvalidObject".
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            reason: reason.into(),
            message: message.into(),
        }
    }
}
