//! Objects, resourceVersions and the event log, with the write semantics of kube-apiserver:
//! preconditions, the `/status` subresource, `generation`, no-op writes, and the errors it
//! answers with.

use std::collections::{BTreeMap, VecDeque};

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::{
    patch,
    resources::{self, ResKey, Resource},
    selectors::{FieldSelector, LabelSelector, labels},
};

/// A Kubernetes `Status` failure.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    pub fn not_found_path() -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: Some(json!({})),
        }
    }

    fn with_name(code: u16, reason: &'static str, r: &Resource, name: &str, msg: String) -> Self {
        let mut details = json!({"name": name, "kind": r.plural});
        if !r.group.is_empty() {
            details["group"] = json!(r.group);
        }
        Self {
            code,
            reason,
            message: msg,
            details: Some(details),
        }
    }

    pub fn not_found(r: &Resource, name: &str) -> Self {
        Self::with_name(
            404,
            "NotFound",
            r,
            name,
            format!("{} \"{name}\" not found", r.qualified()),
        )
    }

    fn already_exists(r: &Resource, name: &str) -> Self {
        Self::with_name(
            409,
            "AlreadyExists",
            r,
            name,
            format!("{} \"{name}\" already exists", r.qualified()),
        )
    }

    fn conflict(r: &Resource, name: &str) -> Self {
        Self::with_name(
            409,
            "Conflict",
            r,
            name,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                r.qualified()
            ),
        )
    }

    fn invalid(r: &Resource, name: &str, field: &str, detail: String) -> Self {
        let kind = if r.group.is_empty() {
            r.kind.clone()
        } else {
            format!("{}.{}", r.kind, r.group)
        };
        let mut details = json!({"name": name, "kind": r.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}]});
        if !r.group.is_empty() {
            details["group"] = json!(r.group);
        }
        Self {
            code: 422,
            reason: "Invalid",
            message: format!("{kind} \"{name}\" is invalid: {field}: {detail}"),
            details: Some(details),
        }
    }

    pub fn expired(message: String) -> Self {
        Self {
            code: 410,
            reason: "Expired",
            message,
            details: Some(json!({})),
        }
    }

    pub fn unsupported_media_type(message: String) -> Self {
        Self {
            code: 415,
            reason: "UnsupportedMediaType",
            message,
            details: Some(json!({})),
        }
    }

    pub fn method_not_allowed(message: String) -> Self {
        Self {
            code: 405,
            reason: "MethodNotAllowed",
            message,
            details: Some(json!({})),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as the watch cache keeps it.
#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub res: ResKey,
    pub namespace: String,
    pub typ: EventType,
    /// The object after the change (for a deletion: as it was, at the deletion's version).
    pub object: Value,
    /// The object before the change.
    pub prev: Option<Value>,
}

/// How a write is made: to `/status` only, as a PUT (the body is the whole object), and
/// whether it is a dry run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Write {
    pub status_only: bool,
    pub put: bool,
    pub dry_run: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

/// How many events the log keeps before the oldest are compacted away.
const DEFAULT_LOG: usize = 10_000;

pub struct Store {
    pub resources: BTreeMap<ResKey, Resource>,
    objects: BTreeMap<ResKey, BTreeMap<(String, String), Value>>,
    rv: u64,
    log: VecDeque<Event>,
    /// Events at or below this resourceVersion are gone: watching from before it is 410.
    compacted: u64,
    max_log: usize,
    next_cluster_ip: u32,
}

/// A list answer.
pub struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn rv_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v["metadata"].as_object_mut().expect("made an object above")
}

/// What `generation` tracks: everything but metadata, status and the type fields.
fn spec_part(v: &Value) -> Value {
    let mut o = v.as_object().cloned().unwrap_or_default();
    for k in ["metadata", "status", "apiVersion", "kind"] {
        o.remove(k);
    }
    Value::Object(o)
}

/// The object without what the server changes on every write, for no-op detection.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    let m = meta_mut(&mut v);
    m.remove("resourceVersion");
    m.remove("managedFields");
    v
}

fn uid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn now() -> String {
    cedille_common::rfc3339(std::time::SystemTime::now())
}

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_name(r: &Resource, name: &str) -> Result<(), ApiError> {
    let label_only = r.group.is_empty() && matches!(r.plural.as_str(), "namespaces" | "services");
    let ok = if label_only {
        is_label(name)
    } else {
        name.len() <= 253 && name.split('.').all(is_label)
    };
    if ok {
        return Ok(());
    }
    let msg = if label_only { LABEL_MSG } else { SUBDOMAIN_MSG };
    Err(ApiError::invalid(
        r,
        name,
        "metadata.name",
        format!("Invalid value: \"{name}\": {msg}"),
    ))
}

impl Store {
    pub fn new() -> Self {
        let mut s = Self {
            resources: BTreeMap::new(),
            objects: BTreeMap::new(),
            rv: 0,
            log: VecDeque::new(),
            compacted: 0,
            max_log: DEFAULT_LOG,
            next_cluster_ip: 1,
        };
        for r in resources::builtins() {
            s.objects.entry(r.key()).or_default();
            s.resources.insert(r.key(), r);
        }
        let ns = ("".to_owned(), "namespaces".to_owned());
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let _ = s.create(&ns, None, json!({"metadata": {"name": name}}), false);
        }
        s
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The resource served at `group/version` under `plural`.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.resources
            .get(&(group.to_owned(), plural.to_owned()))
            .filter(|r| r.serves(version))
    }

    /// Drops the whole event log: any watch or continue token from before now gets 410.
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.log.clear();
    }

    pub fn set_log_limit(&mut self, n: usize) {
        self.max_log = n.max(1);
    }

    /// Events after `cursor`, or `Err(oldest resourceVersion still known)` if compacted.
    pub fn events_after(&self, cursor: u64) -> Result<Vec<Event>, u64> {
        if cursor < self.compacted {
            return Err(self.compacted + 1);
        }
        Ok(self.log.iter().filter(|e| e.rv > cursor).cloned().collect())
    }

    fn resource_of(&self, res: &ResKey) -> Result<Resource, ApiError> {
        self.resources
            .get(res)
            .cloned()
            .ok_or_else(ApiError::not_found_path)
    }

    fn commit(
        &mut self,
        r: &Resource,
        ns: &str,
        mut obj: Value,
        typ: EventType,
        prev: Option<Value>,
    ) -> Value {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let name = name_of(&obj).to_owned();
        let table = self.objects.entry(r.key()).or_default();
        if typ == EventType::Deleted {
            table.remove(&(ns.to_owned(), name));
        } else {
            table.insert((ns.to_owned(), name), obj.clone());
        }
        self.log.push_back(Event {
            rv: self.rv,
            res: r.key(),
            namespace: ns.to_owned(),
            typ,
            object: obj.clone(),
            prev,
        });
        while self.log.len() > self.max_log {
            if let Some(e) = self.log.pop_front() {
                self.compacted = e.rv;
            }
        }
        obj
    }

    pub fn get(&self, res: &ResKey, ns: &str, name: &str) -> Result<Value, ApiError> {
        let r = self.resource_of(res)?;
        self.objects
            .get(res)
            .and_then(|t| t.get(&(ns.to_owned(), name.to_owned())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&r, name))
    }

    pub fn list(
        &self,
        res: &ResKey,
        ns: Option<&str>,
        labels_sel: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListResult, ApiError> {
        let start = match continue_token.filter(|t| !t.is_empty()) {
            Some(t) => {
                let (rv, key) = decode_continue(t)
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                if rv < self.compacted {
                    return Err(ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".into()));
                }
                Some(key)
            }
            None => None,
        };
        let empty = BTreeMap::new();
        let table = self.objects.get(res).unwrap_or(&empty);
        let matching: Vec<(&(String, String), &Value)> = table
            .iter()
            .filter(|(k, _)| ns.is_none_or(|n| k.0 == n))
            .filter(|(k, _)| start.as_ref().is_none_or(|s| *k > s))
            .filter(|(_, v)| labels_sel.matches(&labels(v)) && fields.matches(v))
            .collect();
        let (page, rest) = match limit.filter(|l| *l > 0) {
            Some(l) if matching.len() > l => matching.split_at(l),
            _ => (matching.as_slice(), &[][..]),
        };
        let continue_token = (!rest.is_empty())
            .then(|| page.last().map(|(k, _)| encode_continue(self.rv, k)))
            .flatten();
        Ok(ListResult {
            items: page.iter().map(|(_, v)| (*v).clone()).collect(),
            resource_version: self.rv,
            continue_token,
            remaining: (!rest.is_empty()).then_some(rest.len()),
        })
    }

    /// Objects of a resource that a watch would start with (no resourceVersion given).
    pub fn snapshot(&self, res: &ResKey, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .get(res)
            .map(|t| {
                t.iter()
                    .filter(|(k, _)| ns.is_none_or(|n| k.0 == n))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn check_namespace(&self, r: &Resource, ns: &str) -> Result<(), ApiError> {
        if !r.namespaced {
            return Ok(());
        }
        let nsres = ("".to_owned(), "namespaces".to_owned());
        let exists = self
            .objects
            .get(&nsres)
            .is_some_and(|t| t.contains_key(&(String::new(), ns.to_owned())));
        if exists {
            Ok(())
        } else {
            let r = self.resource_of(&nsres)?;
            Err(ApiError::not_found(&r, ns))
        }
    }

    pub fn create(
        &mut self,
        res: &ResKey,
        url_ns: Option<&str>,
        mut body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let r = self.resource_of(res)?;
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be an object",
            ));
        }
        if let Some(k) = body.get("kind").and_then(Value::as_str)
            && k != r.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({k}) does not match the kind of the resource ({})",
                r.kind
            )));
        }
        let ns = if r.namespaced {
            let url_ns = url_ns.unwrap_or("default");
            match body.pointer("/metadata/namespace").and_then(Value::as_str) {
                Some(b) if !b.is_empty() && b != url_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            url_ns.to_owned()
        } else {
            String::new()
        };
        let m = meta_mut(&mut body);
        let mut name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if name.is_empty() {
            let prefix = m.get("generateName").and_then(Value::as_str).unwrap_or("");
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &r,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required".into(),
                ));
            }
            const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            let suffix: String = (0..5)
                .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
                .collect();
            name = format!("{prefix}{suffix}");
        }
        check_name(&r, &name)?;
        self.check_namespace(&r, &ns)?;
        if self
            .objects
            .get(res)
            .is_some_and(|t| t.contains_key(&(ns.clone(), name.clone())))
        {
            return Err(ApiError::already_exists(&r, &name));
        }
        body["apiVersion"] = json!(r.api_version(&r.versions[0]));
        body["kind"] = json!(r.kind);
        let m = meta_mut(&mut body);
        m.insert("name".into(), json!(name));
        if r.namespaced {
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), json!(uid()));
        m.insert("creationTimestamp".into(), json!(now()));
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "managedFields",
            "selfLink",
        ] {
            m.remove(k);
        }
        if r.generation {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        self.defaults_on_create(&r, &mut body)?;
        if dry_run {
            return Ok(body);
        }
        if r.key() == crd_key() {
            self.register_crd(&body, &r, &name)?;
            body["status"] = resources::crd_status(&resources::from_crd(&body).expect("checked"));
        }
        Ok(self.commit(&r, &ns, body, EventType::Added, None))
    }

    /// What the API server's create strategies set: reset status where it is a
    /// subresource, Namespace labels, Service cluster IPs, Secret `stringData`.
    fn defaults_on_create(&mut self, r: &Resource, body: &mut Value) -> Result<(), ApiError> {
        if r.status {
            body.as_object_mut().map(|o| o.remove("status"));
        }
        if r.custom {
            return Ok(());
        }
        match (r.group.as_str(), r.plural.as_str()) {
            ("", "namespaces") => {
                let name = name_of(body).to_owned();
                let m = meta_mut(body);
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                labels["kubernetes.io/metadata.name"] = json!(name);
                body["spec"] = json!({"finalizers": ["kubernetes"]});
                body["status"] = json!({"phase": "Active"});
            }
            ("", "pods") => {
                body["status"] = json!({"phase": "Pending"});
                let spec = body
                    .as_object_mut()
                    .expect("object")
                    .entry("spec")
                    .or_insert_with(|| json!({}));
                if spec.get("serviceAccountName").is_none() {
                    spec["serviceAccountName"] = json!("default");
                }
            }
            ("", "services") => {
                let spec = body
                    .as_object_mut()
                    .expect("object")
                    .entry("spec")
                    .or_insert_with(|| json!({}));
                if spec.get("type").is_none() {
                    spec["type"] = json!("ClusterIP");
                }
                if spec["type"] != "ExternalName" && spec.get("clusterIP").is_none() {
                    // 10.96.0.0/12, as kubeadm's default service CIDR.
                    let n = self.next_cluster_ip;
                    self.next_cluster_ip += 1;
                    let ip = std::net::Ipv4Addr::from(
                        u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + n,
                    );
                    spec["clusterIP"] = json!(ip.to_string());
                    spec["clusterIPs"] = json!([ip.to_string()]);
                }
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        if p.get("protocol").is_none() {
                            p["protocol"] = json!("TCP");
                        }
                        if p.get("targetPort").is_none() {
                            p["targetPort"] = p.get("port").cloned().unwrap_or(Value::Null);
                        }
                    }
                }
                body["status"] = json!({"loadBalancer": {}});
            }
            ("", "secrets") => {
                secret_string_data(body);
                if body.get("type").is_none() {
                    body["type"] = json!("Opaque");
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn register_crd(&mut self, crd: &Value, r: &Resource, name: &str) -> Result<(), ApiError> {
        let def = resources::from_crd(crd).map_err(|e| ApiError::invalid(r, name, "spec", e))?;
        self.objects.entry(def.key()).or_default();
        self.resources.insert(def.key(), def);
        Ok(())
    }

    /// PUT, and what PATCH resolves to: a whole new version of the object.
    pub fn replace(
        &mut self,
        res: &ResKey,
        ns: &str,
        name: &str,
        new: Value,
        how: Write,
    ) -> Result<Value, ApiError> {
        let Write {
            status_only,
            put,
            dry_run,
        } = how;
        let r = self.resource_of(res)?;
        let current = self.get(res, ns, name)?;
        if put && name_of(&new) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&new)
            )));
        }
        match rv_of(&new) {
            Some(rv) if Some(rv) != rv_of(&current) => return Err(ApiError::conflict(&r, name)),
            None if put && r.custom => {
                return Err(ApiError::invalid(
                    &r,
                    name,
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update".into(),
                ));
            }
            _ => {}
        }
        let mut next = if status_only {
            let mut n = current.clone();
            match new.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    n.as_object_mut().map(|o| o.remove("status"));
                }
            }
            n
        } else {
            let mut n = new;
            let cm = current.get("metadata").cloned().unwrap_or_default();
            let m = meta_mut(&mut n);
            for k in [
                "uid",
                "creationTimestamp",
                "namespace",
                "generation",
                "name",
            ] {
                match cm.get(k) {
                    Some(v) => {
                        m.insert(k.into(), v.clone());
                    }
                    None => {
                        m.remove(k);
                    }
                }
            }
            m.remove("managedFields");
            if r.status {
                match current.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        n.as_object_mut().map(|o| o.remove("status"));
                    }
                }
            }
            n
        };
        next["apiVersion"] = current["apiVersion"].clone();
        next["kind"] = current["kind"].clone();
        if !status_only {
            defaults_on_update(&r, &current, &mut next);
        }
        if comparable(&next) == comparable(&current) {
            return Ok(current);
        }
        if r.generation && spec_part(&next) != spec_part(&current) {
            let g = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut next).insert("generation".into(), json!(g + 1));
        }
        if dry_run {
            return Ok(next);
        }
        if r.key() == crd_key() && !status_only {
            self.register_crd(&next, &r, name)?;
        }
        Ok(self.commit(&r, ns, next, EventType::Modified, Some(current)))
    }

    /// PATCH. Returns the object and whether it was created (server-side apply).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        res: &ResKey,
        url_ns: Option<&str>,
        name: &str,
        typ: PatchType,
        body: &[u8],
        status_only: bool,
        field_manager: Option<&str>,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        let r = self.resource_of(res)?;
        let ns = if r.namespaced {
            url_ns.unwrap_or("default").to_owned()
        } else {
            String::new()
        };
        let parse_json = || -> Result<Value, ApiError> {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
        };
        if typ == PatchType::Strategic && r.custom {
            return Err(ApiError::unsupported_media_type("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into()));
        }
        let current = match self.get(res, &ns, name) {
            Ok(c) => c,
            Err(e) if typ == PatchType::Apply && !status_only && e.code == 404 => {
                if field_manager.is_none_or(str::is_empty) {
                    return Err(ApiError::bad_request(
                        "PATCH /apply: fieldManager is required for apply requests",
                    ));
                }
                let mut obj = parse_yaml(body)?;
                if name_of(&obj) != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        name_of(&obj)
                    )));
                }
                meta_mut(&mut obj).remove("resourceVersion");
                return self.create(res, url_ns, obj, dry_run).map(|o| (o, true));
            }
            Err(e) => return Err(e),
        };
        let mut next = current.clone();
        match typ {
            PatchType::Merge => patch::merge(&mut next, &parse_json()?),
            PatchType::Strategic => patch::strategic(&mut next, &parse_json()?),
            PatchType::Json => {
                patch::json_patch(&mut next, &parse_json()?).map_err(|message| ApiError {
                    code: 422,
                    reason: "Invalid",
                    message,
                    details: None,
                })?
            }
            PatchType::Apply => {
                if field_manager.is_none_or(str::is_empty) {
                    return Err(ApiError::bad_request(
                        "PATCH /apply: fieldManager is required for apply requests",
                    ));
                }
                let applied = parse_yaml(body)?;
                patch::merge(&mut next, &applied);
            }
        }
        let how = Write {
            status_only,
            put: false,
            dry_run,
        };
        self.replace(res, &ns, name, next, how).map(|o| (o, false))
    }

    pub fn delete(
        &mut self,
        res: &ResKey,
        ns: &str,
        name: &str,
        precondition_rv: Option<&str>,
    ) -> Result<Value, ApiError> {
        let r = self.resource_of(res)?;
        let current = self.get(res, ns, name)?;
        if let Some(rv) = precondition_rv
            && Some(rv) != rv_of(&current)
        {
            return Err(ApiError::conflict(&r, name));
        }
        if r.key() == ("".to_owned(), "namespaces".to_owned()) {
            // The namespace controller removes everything in it.
            let keys: Vec<ResKey> = self.resources.keys().cloned().collect();
            for k in keys {
                let nsr = self.resources[&k].clone();
                if !nsr.namespaced {
                    continue;
                }
                for obj in self.snapshot(&k, Some(name)) {
                    self.commit(&nsr, name, obj.clone(), EventType::Deleted, Some(obj));
                }
            }
        }
        if r.key() == crd_key()
            && let Ok(def) = resources::from_crd(&current)
        {
            for obj in self.snapshot(&def.key(), None) {
                let ons = obj
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                self.commit(&def, &ons, obj.clone(), EventType::Deleted, Some(obj));
            }
            self.resources.remove(&def.key());
        }
        Ok(self.commit(&r, ns, current.clone(), EventType::Deleted, Some(current)))
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// What the update strategies of built-in kinds keep or fill in: the Namespace name label
/// and finalizers, a Service's allocated cluster IPs and port defaults, a Secret's type and
/// `stringData`, a Pod's service account.
fn defaults_on_update(r: &Resource, current: &Value, next: &mut Value) {
    if r.custom || !r.group.is_empty() {
        return;
    }
    let keep = |next: &mut Value, pointer: &str| {
        if next.pointer(pointer).is_none()
            && let Some(v) = current.pointer(pointer)
        {
            let (parent, field) = pointer.rsplit_once('/').expect("a pointer");
            let parent = if parent.is_empty() {
                Some(&mut *next)
            } else {
                next.pointer_mut(parent)
            };
            if let Some(Value::Object(m)) = parent {
                m.insert(field.to_owned(), v.clone());
            }
        }
    };
    match r.plural.as_str() {
        "namespaces" => {
            let name = name_of(next).to_owned();
            let labels = meta_mut(next).entry("labels").or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = json!(name);
            if let Some(spec) = current.get("spec") {
                next["spec"] = spec.clone();
            }
        }
        "services" => {
            if next.get("spec").is_none() {
                next["spec"] = json!({});
            }
            keep(next, "/spec/type");
            keep(next, "/spec/clusterIP");
            keep(next, "/spec/clusterIPs");
            if let Some(ports) = next
                .pointer_mut("/spec/ports")
                .and_then(Value::as_array_mut)
            {
                for p in ports {
                    if p.get("protocol").is_none() {
                        p["protocol"] = json!("TCP");
                    }
                    if p.get("targetPort").is_none() {
                        p["targetPort"] = p.get("port").cloned().unwrap_or(Value::Null);
                    }
                }
            }
        }
        "secrets" => {
            secret_string_data(next);
            keep(next, "/type");
        }
        "pods" => keep(next, "/spec/serviceAccountName"),
        _ => {}
    }
}

fn crd_key() -> ResKey {
    (
        "apiextensions.k8s.io".to_owned(),
        "customresourcedefinitions".to_owned(),
    )
}

fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    serde_yaml_ng::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// `stringData` is write-only: the API server folds it into `data` (base64).
fn secret_string_data(body: &mut Value) {
    let Some(sd) = body
        .as_object_mut()
        .and_then(|o| o.remove("stringData"))
        .and_then(|v| v.as_object().cloned())
    else {
        return;
    };
    let data = body
        .as_object_mut()
        .expect("object")
        .entry("data")
        .or_insert_with(|| json!({}));
    for (k, v) in sd {
        if let Some(s) = v.as_str() {
            data[k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
        }
    }
}

fn encode_continue(rv: u64, key: &(String, String)) -> String {
    let raw = json!({"rv": rv, "ns": key.0, "name": key.1}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> Option<(u64, (String, String))> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    Some((
        v.get("rv")?.as_u64()?,
        (
            v.get("ns")?.as_str()?.to_owned(),
            v.get("name")?.as_str()?.to_owned(),
        ),
    ))
}
