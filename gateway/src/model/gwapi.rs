//! Gateway API kinds (gateway.networking.k8s.io/v1), spec side. Status is computed by
//! `translate` and has its own types there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use cedille_objects::SharedStr;

use super::ObjectMeta;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayClass {
    pub metadata: ObjectMeta,
    pub spec: GatewayClassSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    pub controller_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    pub metadata: ObjectMeta,
    pub spec: GatewaySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTls>,
    /// Which ListenerSets may attach (none unless said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_listeners: Option<AllowedListeners>,
}

/// Gateway-wide TLS settings (spec.tls).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<FrontendTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendTls>,
}

/// TLS from the gateway to backends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTls {
    /// The certificate the gateway presents to backends that ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_ref: Option<SecretObjectReference>,
}

/// Client certificate validation for HTTPS listeners: a default, and per-port overrides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<TlsConfig>,
    #[serde(default)]
    pub per_port: Vec<PerPortTls>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PerPortTls {
    pub port: i32,
    pub tls: TlsConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<FrontendValidation>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendValidation {
    #[serde(default)]
    pub ca_certificate_refs: Vec<SecretObjectReference>,
    /// `AllowValidOnly` (default) or `AllowInsecureFallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedListeners {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
}

/// A set of listeners added to a Gateway by someone other than its owner (GEP-1713).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerSet {
    pub metadata: ObjectMeta,
    pub spec: ListenerSetSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSetSpec {
    pub parent_ref: ParentGatewayReference,
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentGatewayReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub port: i32,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default)]
    pub certificate_refs: Vec<SecretObjectReference>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default)]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Kubernetes label selector semantics (all terms must hold).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let val = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => val.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => !val.is_some_and(|v| e.values.contains(v)),
                    "Exists" => val.is_some(),
                    "DoesNotExist" => val.is_none(),
                    _ => false,
                }
            })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpRoute {
    pub metadata: ObjectMeta,
    pub spec: HttpRouteSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Box<[ParentReference]>,
    #[serde(default)]
    pub hostnames: Box<[Box<str>]>,
    #[serde(default)]
    pub rules: Box<[HttpRouteRule]>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<SharedStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<SharedStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<SharedStr>,
    pub name: Box<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<SharedStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "HttpRouteRuleWire")]
pub struct HttpRouteRule {
    pub matches: Box<[HttpRouteMatch]>,
    pub filters: Box<[HttpRouteFilter]>,
    pub backend_refs: Box<[HttpBackendRef]>,
    /// Name, timeouts and retry, in one box: few rules have any, every route is stored,
    /// and a rule without them is a size class smaller.
    rare: Option<Box<RuleRare>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct RuleRare {
    name: Option<SharedStr>,
    timeouts: Option<HttpRouteTimeouts>,
    retry: Option<HttpRouteRetry>,
}

impl HttpRouteRule {
    pub fn name(&self) -> Option<&SharedStr> {
        self.rare.as_ref().and_then(|r| r.name.as_ref())
    }

    pub fn timeouts(&self) -> Option<&HttpRouteTimeouts> {
        self.rare.as_ref().and_then(|r| r.timeouts.as_ref())
    }

    pub fn retry(&self) -> Option<&HttpRouteRetry> {
        self.rare.as_ref().and_then(|r| r.retry.as_ref())
    }
}

/// [`HttpRouteRule`] as it is read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpRouteRuleWire {
    #[serde(default)]
    name: Option<SharedStr>,
    #[serde(default)]
    matches: Box<[HttpRouteMatch]>,
    #[serde(default)]
    filters: Box<[HttpRouteFilter]>,
    #[serde(default)]
    backend_refs: Box<[HttpBackendRef]>,
    #[serde(default)]
    timeouts: Option<HttpRouteTimeouts>,
    #[serde(default)]
    retry: Option<HttpRouteRetry>,
}

impl From<HttpRouteRuleWire> for HttpRouteRule {
    fn from(w: HttpRouteRuleWire) -> Self {
        let rare = (w.name.is_some() || w.timeouts.is_some() || w.retry.is_some()).then(|| {
            Box::new(RuleRare {
                name: w.name,
                timeouts: w.timeouts,
                retry: w.retry,
            })
        });
        HttpRouteRule {
            matches: w.matches,
            filters: w.filters,
            backend_refs: w.backend_refs,
            rare,
        }
    }
}

/// Written as read, without copying the rule (every stored route's spec is written once
/// for its fingerprint).
impl Serialize for HttpRouteRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Written<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            name: Option<&'a SharedStr>,
            matches: &'a [HttpRouteMatch],
            filters: &'a [HttpRouteFilter],
            backend_refs: &'a [HttpBackendRef],
            #[serde(skip_serializing_if = "Option::is_none")]
            timeouts: Option<&'a HttpRouteTimeouts>,
            #[serde(skip_serializing_if = "Option::is_none")]
            retry: Option<&'a HttpRouteRetry>,
        }
        Written {
            name: self.name(),
            matches: &self.matches,
            filters: &self.filters,
            backend_refs: &self.backend_refs,
            timeouts: self.timeouts(),
            retry: self.retry(),
        }
        .serialize(s)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    #[serde(default)]
    pub headers: Box<[HttpHeaderMatch]>,
    #[serde(default)]
    pub query_params: Box<[HttpHeaderMatch]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<SharedStr>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<SharedStr>,
    /// Shared: the same paths ("/", "/api") recur across a cluster's routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<SharedStr>,
}

/// A header or query parameter match (same shape).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderMatch {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<SharedStr>,
    pub name: Box<str>,
    pub value: Box<str>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub type_: Box<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<Box<HttpHeaderFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<Box<HttpHeaderFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<Box<HttpRequestRedirect>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<Box<HttpUrlRewrite>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<Box<HttpRequestMirror>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Box<HttpCors>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<Box<serde_json::Value>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderFilter {
    #[serde(default)]
    pub set: Box<[HttpHeader]>,
    #[serde(default)]
    pub add: Box<[HttpHeader]>,
    #[serde(default)]
    pub remove: Box<[Box<str>]>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpHeader {
    pub name: Box<str>,
    pub value: Box<str>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequestRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathModifier {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpUrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequestMirror {
    pub backend_ref: BackendObjectReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fraction {
    pub numerator: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpCors {
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<SharedStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<SharedStr>,
    pub name: Box<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<SharedStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackendRef {
    #[serde(flatten)]
    pub backend: BackendObjectReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Behind a thin pointer: few backendRefs have filters, and one without is a size
    /// class smaller. None when the list is empty or absent (the two mean the same).
    #[serde(
        default,
        deserialize_with = "thin_filters",
        skip_serializing_if = "Option::is_none"
    )]
    filters: Option<Box<Filters>>,
}

type Filters = Box<[HttpRouteFilter]>;

fn thin_filters<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<Filters>>, D::Error> {
    let list = Filters::deserialize(d)?;
    Ok((!list.is_empty()).then(|| Box::new(list)))
}

impl HttpBackendRef {
    pub fn filters(&self) -> &[HttpRouteFilter] {
        self.filters.as_deref().map_or(&[], |f| f)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRetry {
    #[serde(default)]
    pub codes: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceGrant {
    pub metadata: ObjectMeta,
    pub spec: ReferenceGrantSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceGrantSpec {
    #[serde(default)]
    pub from: Vec<ReferenceGrantFrom>,
    #[serde(default)]
    pub to: Vec<ReferenceGrantTo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceGrantFrom {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceGrantTo {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// How the gateway connects to a Service over TLS (GEP-1897).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendTlsPolicy {
    pub metadata: ObjectMeta,
    pub spec: BackendTlsPolicySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTlsPolicySpec {
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default)]
    pub validation: BackendTlsValidation,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTlsValidation {
    #[serde(default)]
    pub ca_certificate_refs: Vec<SecretObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub well_known_ca_certificates: Option<String>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub subject_alt_names: Vec<SubjectAltName>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectAltName {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_rule_and_backend_fields_read_and_write_as_written() {
        let text = serde_json::json!({
            "name": "first",
            "matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
            "backendRefs": [{
                "name": "svc", "port": 80, "weight": 3,
                "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["x"]}}]
            }],
            "timeouts": {"request": "5s"},
            "retry": {"codes": [503], "attempts": 2}
        });
        let rule: HttpRouteRule = serde_json::from_value(text.clone()).unwrap();
        assert_eq!(rule.name().map(|n| &**n), Some("first"));
        assert_eq!(rule.timeouts().unwrap().request.as_deref(), Some("5s"));
        assert_eq!(rule.retry().unwrap().codes, [503]);
        assert_eq!(rule.backend_refs[0].filters().len(), 1);
        let written = serde_json::to_value(&rule).unwrap();
        assert_eq!(written["name"], "first");
        assert_eq!(written["timeouts"], text["timeouts"]);
        assert_eq!(written["retry"], text["retry"]);
        assert_eq!(
            serde_json::from_value::<HttpRouteRule>(written).unwrap(),
            rule
        );

        let plain: HttpRouteRule =
            serde_json::from_value(serde_json::json!({"backendRefs": [{"name": "svc"}]})).unwrap();
        assert!(plain.rare.is_none() && plain.name().is_none() && plain.retry().is_none());
        assert!(plain.backend_refs[0].filters().is_empty());
        // An empty list and none are the same rule (and the same spec fingerprint).
        let empty: HttpRouteRule = serde_json::from_value(
            serde_json::json!({"backendRefs": [{"name": "svc", "filters": []}]}),
        )
        .unwrap();
        assert_eq!(empty, plain);
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            serde_json::to_string(&plain).unwrap()
        );
        assert_eq!(
            plain,
            HttpRouteRule {
                backend_refs: plain.backend_refs.clone(),
                ..Default::default()
            }
        );
    }
}
