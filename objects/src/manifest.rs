//! Raw objects (YAML documents of a manifest file, or JSON from the API server) into typed
//! ones. Every error names where the object came from, the document, the object (when it
//! got that far) and the field, so an operator can fix it without guessing.

use std::{collections::HashMap, path::Path, sync::Arc};

use serde::Deserialize;
use serde_json::Value;

pub use cedille_common::ManifestError;

use crate::{catalog::Catalog, meta::ObjKey, store::Stored};

/// One object that decoded, with what the API server said beside it.
#[derive(Clone, Debug)]
pub struct Decoded<C> {
    pub object: C,
    /// The object's `status` as read, for kinds whose status the binary writes.
    pub status: Option<Arc<Value>>,
    /// `metadata.resourceVersion` (API objects only).
    pub resource_version: Option<String>,
    /// Its document's number in the file (0 for API objects).
    pub document: usize,
    /// The [`digest`] of its document's text, when the document made this one object:
    /// while that text stays the same, the object is not decoded again.
    pub digest: Option<u64>,
}

/// An object whose document has not changed since the source was last read: the store
/// keeps its record as it is.
#[derive(Debug)]
pub struct Kept<C: Catalog> {
    pub document: usize,
    pub stored: Arc<Stored<C>>,
    pub digest: u64,
}

/// The outcome of reading one source (a file, or one object from the API).
#[derive(Debug)]
pub struct Parsed<C: Catalog> {
    /// Objects that decoded and validated, in source order.
    pub objects: Vec<Decoded<C>>,
    /// Objects of unchanged documents, in source order (see [`parse_reusing`]).
    pub kept: Vec<Kept<C>>,
    /// Documents that did not; the key is set when the object's identity could be read, so
    /// the store can keep that object's last good version.
    pub errors: Vec<(Option<ObjKey<C::Kind>>, ManifestError)>,
    /// The source as a whole could not be read: nothing in it is trustworthy.
    pub unreadable: bool,
    /// Read from the API server, whose generation and timestamps are authoritative; for
    /// manifest files the store keeps them instead.
    pub from_api: bool,
}

impl<C: Catalog> Default for Parsed<C> {
    fn default() -> Self {
        Self {
            objects: Vec::new(),
            kept: Vec::new(),
            errors: Vec::new(),
            unreadable: false,
            from_api: false,
        }
    }
}

/// Parses a manifest file's text: YAML documents, `kind: List` expanded.
pub fn parse<C: Catalog>(file: &Path, text: &str) -> Parsed<C> {
    let file_s = file.display().to_string();
    let mut out = Parsed::default();
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(de) {
            Ok(v) => docs.push((i + 1, v)),
            Err(e) => {
                out.unreadable = true;
                out.errors.push((
                    None,
                    ManifestError {
                        file: file_s.clone(),
                        document: i + 1,
                        object: None,
                        field: None,
                        message: format!("invalid YAML: {e}"),
                    },
                ));
                return out;
            }
        }
    }
    for (doc, value) in docs {
        push_document(&mut out, &file_s, doc, value);
    }
    out
}

/// Decodes one YAML document: an object, or a `kind: List` (kubectl output) of them.
fn push_document<C: Catalog>(out: &mut Parsed<C>, file: &str, doc: usize, value: Value) {
    if value.is_null() {
        return;
    }
    if value.get("kind").and_then(Value::as_str) == Some("List") {
        let items = value
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for item in items {
            push(out, decode_value(file, doc, item, false));
        }
    } else {
        push(out, decode_value(file, doc, value, false));
    }
}

/// A 64-bit digest of a document's text (`DefaultHasher::new()` has fixed keys, so equal
/// texts always agree; two different texts of one file agreeing, which would keep a stale
/// object, has a chance of about one in 2^64 per change). Never 0.
pub fn digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish().max(1)
}

/// Splits a manifest's text into its documents' texts, each from its `---` line (the
/// first from the start). `None` when the text has what a split by lines cannot follow
/// (directives, `...` document ends); such a file is parsed whole.
fn split_documents(text: &str) -> Option<Vec<&str>> {
    let marker = |line: &str, m: &str| {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    };
    let mut out = Vec::new();
    let (mut start, mut at) = (0, 0);
    // Whether the first chunk has more than blank lines and comments: a header of only
    // those (a licence, say) stays with the first document, as the YAML stream has no
    // document before it (parsed alone, it would count as an empty one and shift the
    // numbers that errors give).
    let mut content = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with('%') || marker(line, "...") {
            return None;
        }
        if at > start && (start > 0 || content) && marker(line, "---") {
            out.push(&text[start..at]);
            start = at;
        }
        if start == 0 && !content {
            let bare = line.trim_start_matches('\u{feff}').trim();
            content = !bare.is_empty() && !bare.starts_with('#');
        }
        at += line.len();
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    Some(out)
}

/// Parses a manifest file's text as [`parse`] does, except that a document whose text is
/// the same as when `previous` was made (by [`digest`]) is not parsed again: its object
/// comes back as [`Kept`]. A change to one object of a file of hundreds then costs one
/// document's parse, not the file's (`cargo xtask bench routes`).
pub fn parse_reusing<C: Catalog>(
    file: &Path,
    text: &str,
    previous: &HashMap<u64, Arc<Stored<C>>>,
) -> Parsed<C> {
    let Some(chunks) = split_documents(text) else {
        return parse(file, text);
    };
    let file_s = file.display().to_string();
    let mut out = Parsed::default();
    let mut document = 0;
    for chunk in chunks {
        let d = digest(chunk);
        if let Some(stored) = previous.get(&d) {
            document += 1;
            out.kept.push(Kept {
                document,
                stored: stored.clone(),
                digest: d,
            });
            continue;
        }
        let mut values = Vec::new();
        for de in serde_yaml_ng::Deserializer::from_str(chunk) {
            match Value::deserialize(de) {
                Ok(v) => values.push(v),
                // Read the whole file again: its error names the line in the file.
                Err(_) => return parse(file, text),
            }
        }
        let single = values.len() == 1;
        for value in values {
            document += 1;
            let (objects, errors) = (out.objects.len(), out.errors.len());
            push_document(&mut out, &file_s, document, value);
            // Reusable when the document made exactly one object and nothing else: a
            // `kind: List` with a rejected item must be read again, or the item's last
            // good version and its error would be lost.
            if single
                && out.objects.len() == objects + 1
                && out.errors.len() == errors
                && let Some(o) = out.objects.last_mut()
            {
                o.digest = Some(d);
            }
        }
    }
    out
}

/// Decodes one object read from the API server. `origin` names it in errors.
pub fn from_api<C: Catalog>(origin: &str, value: Value) -> Parsed<C> {
    let mut out = Parsed {
        from_api: true,
        ..Parsed::default()
    };
    push(&mut out, decode_value(origin, 0, value, true));
    out
}

fn push<C: Catalog>(out: &mut Parsed<C>, r: DocResult<C>) {
    match r {
        Ok(Some(o)) => out.objects.push(o),
        Ok(None) => {}
        Err(e) => out.errors.push(*e),
    }
}

type DocResult<C> =
    Result<Option<Decoded<C>>, Box<(Option<ObjKey<<C as Catalog>::Kind>>, ManifestError)>>;

/// Decodes one object. Kinds the binary does not read (Deployments in a shared manifest,
/// say) are skipped, not errors.
pub fn decode_value<C: Catalog>(
    file: &str,
    document: usize,
    mut value: Value,
    from_api: bool,
) -> DocResult<C> {
    let err = |object: Option<String>, field: Option<String>, message: String| ManifestError {
        file: file.to_owned(),
        document,
        object,
        field,
        message,
    };
    let Some(map) = value.as_object_mut() else {
        return Err(Box::new((
            None,
            err(None, None, "a manifest document must be a mapping".into()),
        )));
    };
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let kind_s = map
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if api_version.is_empty() || kind_s.is_empty() {
        let field = if api_version.is_empty() {
            "apiVersion"
        } else {
            "kind"
        };
        return Err(Box::new((
            None,
            err(None, Some(field.into()), "missing".into()),
        )));
    }
    let Some(kind) = C::kind_of(&api_version, &kind_s) else {
        return Ok(None);
    };
    let info = C::info(kind);
    let status = if from_api && info.keeps_status {
        map.get("status").cloned().map(Arc::new)
    } else {
        None
    };
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if name.is_empty() {
        return Err(Box::new((
            None,
            err(Some(kind_s), Some("metadata.name".into()), "missing".into()),
        )));
    }
    let resource_version = meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let namespace = if info.namespaced {
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_owned();
        if let Some(m) = meta.as_object_mut() {
            m.insert("namespace".into(), Value::String(ns.clone()));
        }
        ns
    } else {
        if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        String::new()
    };
    // In a manifest, generation belongs to the store, whatever the file says.
    if !from_api && let Some(m) = meta.as_object_mut() {
        m.remove("generation");
    }
    let key = ObjKey::new(kind, &namespace, &name);
    let label = key.to_string();
    match C::decode(kind, value) {
        Ok(object) => Ok(Some(Decoded {
            object,
            status,
            resource_version: if from_api { resource_version } else { None },
            document,
            digest: None,
        })),
        Err((field, message)) => Err(Box::new((
            Some(key),
            err(
                Some(label),
                (!field.is_empty() && field != ".").then_some(field),
                message,
            ),
        ))),
    }
}

/// Deserialises `value` as `T`; the error carries the path of the offending field.
pub fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (path, e.into_inner().to_string())
    })
}
