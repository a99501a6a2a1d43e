//! EndpointSlices as discovery reads them.
//!
//! `k8s_openapi`'s `EndpointSlice` decodes every field of every endpoint into its own
//! allocation: the address list, the conditions, the whole `targetRef` (kind, name,
//! namespace, uid), the node and zone names. Discovery reads less, and a 10,000-endpoint
//! Service is decoded in full at every relist and in part at every slice update, so
//! [`LeanSlice`] is decoded straight from the API's JSON into what conversion uses: the
//! first address, parsed as it is read (no allocation when it is an IP address, which it
//! is), the conditions, whether the target is a Pod and its name, the node, the zone and
//! the zone hints. The rest is skipped as it is read. It is also what discovery keeps of
//! each slice between updates.
//!
//! Zone and node names are read into their shared copies ([`shared_name`]) and Pod names
//! into one allocation each, which the snapshots built from the slice share.
//!
//! Measured on the 100-endpoint slice captured from a real API server: decoding takes
//! 0.65× the instructions (656k against 1,004k under callgrind) and the decoded slices
//! take 248 bytes per endpoint against 807 (`cargo bench -p rudder-k8s --bench
//! discovery`). Most of what is left is reading the JSON text itself.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::{shared_hints, shared_name};
use rudder_balance::ZoneHints;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// An EndpointSlice (`discovery.k8s.io/v1`) as discovery reads it: the metadata, the
/// address type, the ports and, per endpoint, only what becomes part of a snapshot. It
/// decodes from the API's JSON like `k8s_openapi`'s `EndpointSlice` (the same errors for
/// the fields it reads; the fields it does not read are skipped), and is a
/// `kube::Resource`, so `kube::Api<LeanSlice>` lists and watches EndpointSlices. Made from
/// an `EndpointSlice` with `From`.
///
/// ```
/// use rudder_k8s::convert::LeanSlice;
///
/// let slice: LeanSlice = serde_json::from_str(r#"{
///     "metadata": {"name": "web-abc12"},
///     "addressType": "IPv4",
///     "endpoints": [{"addresses": ["10.1.0.7"], "conditions": {"ready": true},
///                    "targetRef": {"kind": "Pod", "name": "web-0", "uid": "…"}}],
///     "ports": [{"name": "http", "port": 8080}]
/// }"#)?;
/// assert_eq!(slice.len(), 1);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanSlice {
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) address_type: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) endpoints: Vec<LeanEndpoint>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) ports: Vec<EndpointPort>,
}

impl LeanSlice {
    /// How many endpoints the slice lists.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the slice lists no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// One endpoint of a [`LeanSlice`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LeanEndpoint {
    /// The first of `addresses` (the API allows one per endpoint).
    #[serde(default, rename = "addresses", deserialize_with = "first_address")]
    pub(crate) address: Option<Address>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) conditions: Conditions,
    /// `targetRef.name` when `targetRef.kind` is `Pod`: allocated once, and shared by the
    /// endpoints built from it.
    #[serde(default, rename = "targetRef", deserialize_with = "pod_name")]
    pub(crate) pod: Option<Arc<str>>,
    /// Shared with every endpoint on the same node (see [`shared_name`]).
    #[serde(default, deserialize_with = "name")]
    pub(crate) node_name: Option<Arc<str>>,
    /// Shared like `node_name`.
    #[serde(default, deserialize_with = "name")]
    pub(crate) zone: Option<Arc<str>>,
    /// `hints.forZones[].name`, shared with every endpoint hinted for the same zones (see
    /// [`shared_hints`]).
    #[serde(default, rename = "hints", deserialize_with = "zone_hints")]
    pub(crate) zone_hints: ZoneHints,
}

/// An endpoint's address: parsed when it is an IP address (of either family: the slice's
/// address type decides which is valid), else the text as given.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Address {
    Ip(IpAddr),
    Text(String),
}

impl Address {
    fn new(text: &str) -> Self {
        match text.parse() {
            Ok(ip) => Self::Ip(ip),
            Err(_) => Self::Text(text.to_owned()),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Text(t) => f.write_str(t),
        }
    }
}

/// An endpoint's conditions, each absent unless the API sent it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct Conditions {
    pub(crate) ready: Option<bool>,
    pub(crate) serving: Option<bool>,
    pub(crate) terminating: Option<bool>,
}

/// `null` reads as the default, as a missing field does.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// A string read through `map`, without copying it first (the field types below say what
/// each string becomes).
fn map_str<'de, D: Deserializer<'de>, T>(d: D, map: fn(&str) -> T) -> Result<T, D::Error> {
    struct Text<T>(fn(&str) -> T);

    impl<T> Visitor<'_> for Text<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            Ok((self.0)(v))
        }
    }

    d.deserialize_str(Text(map))
}

/// An address, parsed as it is read ([`Address::new`]).
impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        map_str(d, Address::new)
    }
}

/// A zone or node name, read into its shared copy ([`shared_name`]).
struct SharedName(Arc<str>);

impl<'de> Deserialize<'de> for SharedName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        map_str(d, shared_name).map(SharedName)
    }
}

/// The first address of `addresses`, the others read and dropped.
fn first_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Address>, D::Error> {
    struct First(Option<Address>);

    impl<'de> Deserialize<'de> for First {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Seq;

            impl<'de> Visitor<'de> for Seq {
                type Value = First;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a list of addresses")
                }

                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<First, A::Error> {
                    let first = seq.next_element::<Address>()?;
                    while seq.next_element::<Address>()?.is_some() {}
                    Ok(First(first))
                }
            }

            d.deserialize_seq(Seq)
        }
    }

    Ok(Option::<First>::deserialize(d)?.and_then(|f| f.0))
}

/// The Pod a `targetRef` names; `None` for another kind.
fn pod_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
    /// Whether a `kind` is `Pod`, read without copying it.
    #[derive(Default)]
    struct IsPod(bool);

    impl<'de> Deserialize<'de> for IsPod {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            map_str(d, |kind| kind == "Pod").map(IsPod)
        }
    }

    /// A Pod's name, read into its own shared allocation (Pod names are not repeated, so
    /// not looked up among the shared names).
    struct Name(Arc<str>);

    impl<'de> Deserialize<'de> for Name {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            map_str(d, |name| Arc::from(name)).map(Name)
        }
    }

    #[derive(Deserialize)]
    struct TargetRef {
        #[serde(default, deserialize_with = "null_as_default")]
        kind: IsPod,
        name: Option<Name>,
    }

    let target = Option::<TargetRef>::deserialize(d)?;
    Ok(target
        .filter(|t| t.kind.0)
        .and_then(|t| t.name)
        .map(|n| n.0))
}

/// A zone or node name, read into its shared copy.
fn name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
    Ok(Option::<SharedName>::deserialize(d)?.map(|n| n.0))
}

/// The zone names of `hints.forZones`.
fn zone_hints<'de, D: Deserializer<'de>>(d: D) -> Result<ZoneHints, D::Error> {
    /// A missing name reads as empty, as in `k8s_openapi`.
    #[derive(Deserialize)]
    struct Zone {
        #[serde(default, deserialize_with = "null_as_default")]
        name: Option<SharedName>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Hints {
        #[serde(default, deserialize_with = "null_as_default")]
        for_zones: Vec<Zone>,
    }

    let hints = Option::<Hints>::deserialize(d)?;
    let zones: Vec<Arc<str>> = hints
        .into_iter()
        .flat_map(|h| h.for_zones)
        .map(|z| z.name.map_or_else(|| shared_name(""), |n| n.0))
        .collect();
    Ok(shared_hints(&zones))
}

impl From<&EndpointSlice> for LeanSlice {
    fn from(slice: &EndpointSlice) -> Self {
        let endpoints = slice
            .endpoints
            .iter()
            .map(|ep| {
                let c = ep.conditions.as_ref();
                LeanEndpoint {
                    address: ep.addresses.first().map(|a| Address::new(a)),
                    conditions: Conditions {
                        ready: c.and_then(|c| c.ready),
                        serving: c.and_then(|c| c.serving),
                        terminating: c.and_then(|c| c.terminating),
                    },
                    pod: ep
                        .target_ref
                        .as_ref()
                        .filter(|t| t.kind.as_deref() == Some("Pod"))
                        .and_then(|t| t.name.as_deref())
                        .map(Arc::from),
                    node_name: ep.node_name.as_deref().map(shared_name),
                    zone: ep.zone.as_deref().map(shared_name),
                    zone_hints: shared_hints(
                        &ep.hints
                            .as_ref()
                            .and_then(|h| h.for_zones.as_ref())
                            .into_iter()
                            .flatten()
                            .map(|z| shared_name(&z.name))
                            .collect::<Vec<_>>(),
                    ),
                }
            })
            .collect();
        Self {
            metadata: slice.metadata.clone(),
            address_type: slice.address_type.clone(),
            endpoints,
            ports: slice.ports.clone().unwrap_or_default(),
        }
    }
}

impl k8s_openapi::Resource for LeanSlice {
    const API_VERSION: &'static str = <EndpointSlice as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <EndpointSlice as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <EndpointSlice as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <EndpointSlice as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for LeanSlice {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every EndpointSlice the fixtures captured from a real API server (single objects,
    /// lists, watch streams) decodes as [`LeanSlice`] to what `k8s_openapi`'s decoding of
    /// the same bytes gives through `From`.
    #[test]
    fn captured_slices_decode_as_k8s_openapi_reads_them() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../testkit/tests/fixtures");
        let mut objects = Vec::new();
        for dir in ["objects", "lists", "watch"] {
            collect(&std::path::Path::new(root).join(dir), &mut objects);
        }
        let mut endpoints = 0;
        for (file, object) in &objects {
            let full: EndpointSlice =
                serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
            let lean: LeanSlice =
                serde_json::from_str(&object.to_string()).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(lean, LeanSlice::from(&full), "{file}");
            endpoints += lean.len();
        }
        // The captures hold the 100- and 30-endpoint slices of `big`, among others.
        println!("{} slices, {endpoints} endpoints", objects.len());
        assert!(objects.len() >= 20, "{} slices", objects.len());
        assert!(endpoints >= 130, "{endpoints} endpoints");
    }

    /// Malformed fields that discovery reads fail the slice as `k8s_openapi` fails it (the
    /// watcher then reports the error and keeps the last good endpoints); `null`s, and
    /// fields discovery does not read, decode as `k8s_openapi` decodes them.
    #[test]
    fn odd_slices_decode_or_fail_as_k8s_openapi_does() {
        let with = |endpoint: Value| {
            serde_json::json!({"metadata": {"name": "s"}, "addressType": "IPv4",
                "ports": [{"name": "http", "port": 80}], "endpoints": [endpoint]})
        };
        let ip = |extra: Value| {
            let mut e = serde_json::json!({"addresses": ["10.0.0.1"]});
            e.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            with(e)
        };
        let cases = [
            // Malformed.
            with(serde_json::json!({"addresses": "10.0.0.1"})),
            with(serde_json::json!({"addresses": [10]})),
            ip(serde_json::json!({"conditions": {"ready": "yes"}})),
            ip(serde_json::json!({"targetRef": {"kind": 1}})),
            ip(serde_json::json!({"targetRef": {"name": []}})),
            ip(serde_json::json!({"targetRef": "web-0"})),
            ip(serde_json::json!({"zone": 3})),
            ip(serde_json::json!({"hints": {"forZones": [{"name": 1}]}})),
            serde_json::json!({"metadata": {"name": "s"}, "addressType": "IPv4", "ports": 80}),
            serde_json::json!({"metadata": {"name": "s"}, "addressType": 4}),
            serde_json::json!({"metadata": {"name": "s"}, "endpoints": {}}),
            // `null`s and the unusual but valid.
            serde_json::json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": null, "ports": null}),
            serde_json::json!({"metadata": {"name": "s"}, "addressType": null}),
            serde_json::json!({"metadata": null}),
            serde_json::json!({}),
            with(serde_json::json!({"addresses": null})),
            with(serde_json::json!({"addresses": [null]})),
            with(serde_json::json!({"addresses": []})),
            with(
                serde_json::json!({"addresses": ["10.0.0.1", "10.0.0.2"], "conditions": null,
                "targetRef": {"kind": "Node", "name": "n", "uid": "u", "fieldPath": "x"},
                "hints": {"forZones": null, "forNodes": [{"name": "n"}]}, "deprecatedTopology": {"a": "b"}}),
            ),
            with(serde_json::json!({"addresses": ["not-an-ip"], "targetRef": null, "hints": null})),
            ip(serde_json::json!({"targetRef": {"kind": null, "name": null}})),
            ip(serde_json::json!({"targetRef": {"kind": "Pod"}})),
            ip(serde_json::json!({"conditions": {"ready": null, "serving": false}})),
            ip(serde_json::json!({"hints": {"forZones": [{}, {"name": null}, {"name": "a"}]}})),
            ip(serde_json::json!({"nodeName": null, "zone": null})),
            with(serde_json::json!({"addresses": ["fd00::1"]})),
        ];
        for case in cases {
            let full = serde_json::from_value::<EndpointSlice>(case.clone());
            let lean = serde_json::from_str::<LeanSlice>(&case.to_string());
            assert_eq!(
                lean.as_ref().ok(),
                full.as_ref().ok().map(LeanSlice::from).as_ref(),
                "{case}: lean {:?}, k8s_openapi {:?}",
                lean.as_ref().err(),
                full.as_ref().err()
            );
        }
    }

    /// The EndpointSlices in the JSON files under `dir`: objects, list items and watch
    /// events' objects.
    fn collect(dir: &std::path::Path, out: &mut Vec<(String, Value)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                collect(&path, out);
                continue;
            }
            let name = path.display().to_string();
            if !name.contains("endpointslice") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("fixture");
            let docs: Vec<Value> = if name.ends_with(".jsonl") {
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| serde_json::from_str(l).expect("watch line"))
                    .collect()
            } else if name.ends_with(".json") {
                vec![serde_json::from_str(&text).expect("json")]
            } else {
                continue;
            };
            for doc in docs {
                let object = doc.get("object").cloned().unwrap_or(doc);
                let items = object.get("items").and_then(Value::as_array).cloned();
                for o in items.unwrap_or_else(|| vec![object]) {
                    if o["kind"] == "EndpointSlice" || o.get("addressType").is_some() {
                        out.push((name.clone(), o));
                    }
                }
            }
        }
    }
}
