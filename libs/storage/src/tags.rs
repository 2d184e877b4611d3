//! Per-block tag metadata for autocomplete: the attribute keys of each scope, and up to
//! [`MAX_VALUES`] distinct values per key, written into the block's Parquet footer (key
//! [`TAGS_KEY`]) when the block is written or merged. Tag lookups read footers instead of
//! scanning spans; a key with more values is marked incomplete and is scanned for.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use arrow::array::{Array, AsArray, MapArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use serde::{Deserialize, Serialize};
use spindle_schema::{attr_map_column, col, AttrScope, AttrType, DEDICATED_COLUMNS};

/// Footer key holding a block's [`TagSummary`] as JSON.
pub const TAGS_KEY: &str = "spindle.tags";
/// Distinct values kept per key; more mark the key incomplete.
pub const MAX_VALUES: usize = 100;
/// Longest value kept (bytes); longer ones mark the key incomplete.
pub const MAX_VALUE_BYTES: usize = 256;
/// Keys kept per scope; more mark the scope incomplete.
pub const MAX_KEYS: usize = 1000;

/// The values seen of one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TagValues {
    /// `(type, value)`: type is `string`, `int`, `float` or `bool`.
    pub values: BTreeSet<(String, String)>,
    /// False when values were left out (too many, too long, or of other types).
    pub complete: bool,
}

/// The keys of one scope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScopeTags {
    /// Key -> values.
    pub keys: BTreeMap<String, TagValues>,
    /// False when keys were left out.
    pub complete: bool,
}

/// A block's tags: scope (`resource`, `span`, `event`, `link`, `instrumentation`, and
/// `intrinsic` for span names) -> keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TagSummary {
    /// Scopes by name.
    pub scopes: BTreeMap<String, ScopeTags>,
}

impl TagSummary {
    /// Parses the footer value.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// The footer value.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Reads the tag summary from the footer of the block at `path` (`size` bytes); `None` for a
/// block written before summaries existed.
pub async fn read_summary(
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    path: &str,
    size: u64,
) -> crate::Result<Option<TagSummary>> {
    use parquet::arrow::async_reader::AsyncFileReader;
    let mut reader = crate::reader::BlockReader::new(store, object_store::path::Path::from(path), size);
    let metadata = reader.get_metadata(None).await?;
    Ok(metadata
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == TAGS_KEY).and_then(|k| k.value.as_deref()))
        .and_then(TagSummary::from_json))
}

#[derive(Default)]
struct KeyState {
    values: [HashSet<String>; 4],
    complete: bool,
}

struct ScopeState {
    keys: HashMap<String, KeyState>,
    complete: bool,
}

impl Default for ScopeState {
    fn default() -> Self {
        Self::new()
    }
}

const TYPES: [&str; 4] = ["string", "int", "float", "bool"];

impl ScopeState {
    fn new() -> Self {
        ScopeState { keys: HashMap::new(), complete: true }
    }

    fn key(&mut self, key: &str) -> Option<&mut KeyState> {
        if !self.keys.contains_key(key) {
            if self.keys.len() >= MAX_KEYS {
                self.complete = false;
                return None;
            }
            self.keys.insert(key.to_string(), KeyState { complete: true, ..Default::default() });
        }
        self.keys.get_mut(key)
    }

    /// Notes `key` with a value of type `ty` (index into [`TYPES`]); `None` type = a value that
    /// is not kept (bytes, arrays).
    fn add(&mut self, key: &str, value: Option<(usize, &str)>) {
        let Some(k) = self.key(key) else { return };
        if !k.complete {
            return;
        }
        match value {
            None => k.complete = false,
            Some((ty, v)) => {
                if k.values[ty].contains(v) {
                    return;
                }
                let total: usize = k.values.iter().map(HashSet::len).sum();
                if total >= MAX_VALUES || v.len() > MAX_VALUE_BYTES {
                    k.complete = false;
                } else {
                    k.values[ty].insert(v.to_string());
                }
            }
        }
    }
}

/// Collects a [`TagSummary`] from span batches.
pub struct TagSummaryBuilder {
    scopes: BTreeMap<&'static str, ScopeState>,
}

impl Default for TagSummaryBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TagSummaryBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        let scopes = ["resource", "span", "event", "link", "instrumentation", "intrinsic"]
            .into_iter()
            .map(|s| (s, ScopeState::new()))
            .collect();
        Self { scopes }
    }

    fn scope(&mut self, name: &'static str) -> &mut ScopeState {
        self.scopes.entry(name).or_default()
    }

    /// Notes the tags of every span of `batch` (span schema; missing columns are skipped).
    pub fn observe(&mut self, batch: &RecordBatch) {
        for d in DEDICATED_COLUMNS {
            let Some(column) = batch.column_by_name(d.column) else { continue };
            if column.null_count() == column.len() {
                continue;
            }
            let scope = self.scope(scope_name(d.scope));
            add_column(scope, d.key, column.as_ref());
        }
        for s in [AttrScope::Resource, AttrScope::Span] {
            for ty in AttrType::ALL {
                if let Some(map) = batch.column_by_name(&attr_map_column(s, ty)).and_then(|c| c.as_map_opt()) {
                    let scope = self.scope(scope_name(s));
                    add_map(scope, map, ty == AttrType::Other);
                }
            }
        }
        if let Some(map) = batch.column_by_name(col::SCOPE_ATTRS).and_then(|c| c.as_map_opt()) {
            add_map(self.scope("instrumentation"), map, true);
        }
        for (column, scope) in [(col::EVENTS, "event"), (col::LINKS, "link")] {
            let Some(list) = batch.column_by_name(column).and_then(|c| c.as_list_opt::<i32>()) else { continue };
            let Some(items) = list.values().as_struct_opt() else { continue };
            if let Some(map) = attrs_of(items) {
                add_map(self.scope(scope), map, true);
            }
        }
        if let Some(names) = batch.column_by_name(col::NAME) {
            let scope = self.scope("intrinsic");
            add_column(scope, "name", names.as_ref());
        }
    }

    /// The summary.
    pub fn finish(self) -> TagSummary {
        let scopes = self
            .scopes
            .into_iter()
            .map(|(name, s)| {
                let keys = s
                    .keys
                    .into_iter()
                    .map(|(k, state)| {
                        let mut values = BTreeSet::new();
                        for (i, set) in state.values.into_iter().enumerate() {
                            values.extend(set.into_iter().map(|v| (TYPES[i].to_string(), v)));
                        }
                        (k, TagValues { values, complete: state.complete })
                    })
                    .collect();
                (name.to_string(), ScopeTags { keys, complete: s.complete })
            })
            .collect();
        TagSummary { scopes }
    }
}

fn scope_name(s: AttrScope) -> &'static str {
    match s {
        AttrScope::Resource => "resource",
        AttrScope::Span => "span",
    }
}

fn attrs_of(items: &StructArray) -> Option<&MapArray> {
    items.column_by_name("attrs").and_then(|c| c.as_map_opt())
}

fn add_column(scope: &mut ScopeState, key: &str, column: &dyn Array) {
    for i in 0..column.len() {
        if column.is_null(i) {
            continue;
        }
        let text;
        let value = match column.data_type() {
            DataType::Utf8 => (0, column.as_string::<i32>().value(i)),
            DataType::Int64 => {
                text = column.as_primitive::<Int64Type>().value(i).to_string();
                (1, text.as_str())
            }
            _ => {
                scope.add(key, None);
                return;
            }
        };
        scope.add(key, Some(value));
        if scope.keys.get(key).is_some_and(|k| !k.complete) {
            return;
        }
    }
}

/// Keys and values of a map column; `encoded` maps hold protobuf `AnyValue`s.
fn add_map(scope: &mut ScopeState, map: &MapArray, encoded: bool) {
    let keys = map.keys().as_string::<i32>();
    let values = map.values();
    for i in 0..keys.len() {
        let key = keys.value(i);
        if values.is_null(i) {
            scope.add(key, None);
            continue;
        }
        let text;
        let value: Option<(usize, &str)> = match values.data_type() {
            DataType::Utf8 => Some((0, values.as_string::<i32>().value(i))),
            DataType::Int64 => {
                text = values.as_primitive::<Int64Type>().value(i).to_string();
                Some((1, text.as_str()))
            }
            DataType::Float64 => {
                text = values.as_primitive::<Float64Type>().value(i).to_string();
                Some((2, text.as_str()))
            }
            DataType::Boolean => Some((3, if values.as_boolean().value(i) { "true" } else { "false" })),
            DataType::Binary if encoded => {
                use spindle_otlp::otlp::common::v1::any_value::Value;
                match spindle_otlp::decode_any(values.as_binary::<i32>().value(i)).value {
                    Some(Value::StringValue(s)) => {
                        text = s;
                        Some((0, text.as_str()))
                    }
                    Some(Value::IntValue(v)) => {
                        text = v.to_string();
                        Some((1, text.as_str()))
                    }
                    Some(Value::DoubleValue(v)) => {
                        text = v.to_string();
                        Some((2, text.as_str()))
                    }
                    Some(Value::BoolValue(v)) => Some((3, if v { "true" } else { "false" })),
                    _ => None,
                }
            }
            _ => None,
        };
        scope.add(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_values_per_key() {
        let mut s = ScopeState::new();
        for i in 0..MAX_VALUES + 5 {
            s.add("user.id", Some((0, &format!("u{i}"))));
        }
        s.add("k", Some((1, "1")));
        s.add("k", Some((1, "1")));
        let k = &s.keys["user.id"];
        assert!(!k.complete);
        assert_eq!(k.values[0].len(), MAX_VALUES);
        assert!(s.keys["k"].complete);
    }
}
