//! Addressing objects on the API server: the API resource of a kind at a
//! known version. Shared by the kube source, status write-back and the
//! reconcilers' API client, none of which imports another for it.

use kube::api::{ApiResource, GroupVersionKind};

/// The API resource of `api_version`/`kind`, the plural guessed as kube does
/// (ingresses, httproutes): for writing to an object whose version is known.
pub fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}
