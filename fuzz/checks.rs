// The properties every fuzz target checks, shared (through `include!`) by the cargo-fuzz
// targets in `fuzz_targets/` and by `crates/rudder/tests/corpora.rs`, which replays the
// kept corpora as an ordinary test so CI catches regressions without a fuzzer.

/// Label selectors: parsing never panics, and what parses prints back to the same selector.
pub(crate) fn selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(selector) = text.parse::<rudder_balance::Selector>() {
        let printed = selector.to_string();
        let again: rudder_balance::Selector = printed
            .parse()
            .unwrap_or_else(|e| panic!("{printed:?} (printed from {text:?}) does not parse: {e}"));
        assert_eq!(again, selector, "round trip of {text:?}");
        let _ = selector.matches(&Default::default());
    }
}

/// Service references: parsing never panics, and a parsed reference prints back to itself.
pub(crate) fn service_ref(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(svc) = rudder_k8s::ServiceRef::parse_in(text, "default") {
        let printed = svc.to_string();
        let again = rudder_k8s::ServiceRef::parse_in(&printed, "other")
            .unwrap_or_else(|e| panic!("{printed:?} (printed from {text:?}) does not parse: {e}"));
        assert_eq!(again, svc, "round trip of {text:?}");
    }
}

/// API objects to endpoints: whatever the JSON (a Service, EndpointSlices, Endpoints and
/// Pods, each optional and possibly malformed), conversion never panics and every
/// endpoint it keeps is routable data.
pub(crate) fn discovery_objects(data: &[u8]) {
    use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let item = |key: &str| value.get(key).cloned().unwrap_or(serde_json::Value::Null);
    let list = |key: &str| match item(key) {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    let service: Option<Service> = serde_json::from_value(item("service")).ok();
    // Decoded as discovery decodes them; what `k8s_openapi` accepts is accepted alike.
    let slices: Vec<rudder_k8s::convert::LeanSlice> = list("slices")
        .into_iter()
        .filter_map(|v| {
            let lean = serde_json::from_str(&v.to_string()).ok();
            if let Ok(full) = serde_json::from_value::<EndpointSlice>(v) {
                let expected = rudder_k8s::convert::LeanSlice::from(&full);
                assert_eq!(lean.as_ref(), Some(&expected), "decoded apart from k8s_openapi");
            }
            lean
        })
        .collect();
    let endpoints: Option<Endpoints> = serde_json::from_value(item("endpoints")).ok();
    let pods: std::collections::BTreeMap<String, rudder_k8s::PodInfo> = list("pods")
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Pod>(v).ok())
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                rudder_k8s::PodInfo::from_pod(&p),
            )
        })
        .collect();
    let clock = std::sync::Arc::new(rudder_balance::SyncClock::new());
    let ports = [
        None,
        Some(rudder_k8s::PortSpec::Number(80)),
        Some(rudder_k8s::PortSpec::Name("http".into())),
    ];
    for port in &ports {
        for set in [
            rudder_k8s::convert::from_slices(service.as_ref(), port.as_ref(), &slices, &pods, &clock),
            rudder_k8s::convert::from_endpoints(
                service.as_ref(),
                port.as_ref(),
                endpoints.as_ref(),
                &pods,
                &clock,
            ),
        ] {
            let addrs: Vec<_> = set.endpoints().iter().map(|e| e.addr()).collect();
            assert!(addrs.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
            let _ = set.routable().count();
        }
    }
}

/// Mesh configuration: deserialising and applying any JSON never panics; what is accepted
/// builds a layer.
pub(crate) fn mesh_config(data: &[u8]) {
    let Ok(config) = serde_json::from_slice::<rudder::MeshConfig>(data) else {
        return;
    };
    if let Ok(builder) = rudder::MeshLayer::builder_static().config(&config) {
        let _ = builder.build();
    }
}
