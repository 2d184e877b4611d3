//! Window functions over the span tree of one trace, for TraceQL's structural operators and
//! trace-level intrinsics. Each is evaluated over a window partition of one trace (all of its
//! spans, wherever they are stored), so the answers do not depend on how a trace's spans are
//! spread over blocks and unflushed data.
//!
//! A span's parent is the span of the same trace whose id is its `parent_span_id`; a span whose
//! parent is absent from the trace is treated as a root of its own subtree.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, FieldRef, TimestampNanosecondType};
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{PartitionEvaluator, Signature, Volatility, WindowUDF, WindowUDFImpl};
use spindle_traceql::Relation;

/// One trace's spans as a tree.
pub struct SpanTree {
    /// Parent row of each row, if the parent is in the trace.
    pub parent: Vec<Option<usize>>,
    /// Child rows of each row, by start time then span id.
    pub children: Vec<Vec<usize>>,
    /// Whether the row's `parent_span_id` is null (a true root).
    pub is_root: Vec<bool>,
    /// Each row's `parent_span_id` (spans with the same one are siblings).
    pub parent_ids: Vec<Option<[u8; 8]>>,
}

impl SpanTree {
    /// Builds the tree of rows with these ids, parent ids (`None` = root) and start times.
    pub fn build(span_ids: &[[u8; 8]], parent_ids: &[Option<[u8; 8]>], starts: &[i64]) -> Self {
        let n = span_ids.len();
        let mut by_id: HashMap<[u8; 8], usize> = HashMap::with_capacity(n);
        for (i, id) in span_ids.iter().enumerate() {
            by_id.entry(*id).or_insert(i);
        }
        let parent: Vec<Option<usize>> = parent_ids
            .iter()
            .enumerate()
            .map(|(i, p)| p.and_then(|p| by_id.get(&p).copied()).filter(|&p| p != i))
            .collect();
        let mut children = vec![Vec::new(); n];
        for (i, p) in parent.iter().enumerate() {
            if let Some(p) = p {
                children[*p].push(i);
            }
        }
        for c in &mut children {
            c.sort_by_key(|&i| (starts[i], span_ids[i]));
        }
        let is_root = parent_ids.iter().map(Option::is_none).collect();
        let mut tree = SpanTree { parent, children, is_root, parent_ids: parent_ids.to_vec() };
        tree.break_cycles();
        tree
    }

    /// Malformed data can make spans each other's ancestors; cut such loops so every walk up
    /// the tree ends.
    fn break_cycles(&mut self) {
        let n = self.parent.len();
        // 0 = unvisited, 1 = on the current path, 2 = done.
        let mut state = vec![0u8; n];
        for start in 0..n {
            let mut path = Vec::new();
            let mut i = start;
            loop {
                if state[i] == 2 {
                    break;
                }
                if state[i] == 1 {
                    // `i` closes a loop: detach it from its parent.
                    if let Some(p) = self.parent[i].take() {
                        self.children[p].retain(|&c| c != i);
                    }
                    break;
                }
                state[i] = 1;
                path.push(i);
                match self.parent[i] {
                    Some(p) => i = p,
                    None => break,
                }
            }
            for j in path {
                state[j] = 2;
            }
        }
    }

    /// Rows with no parent in the trace, by start time then id.
    fn tops(&self, order_key: impl Fn(usize) -> (i64, [u8; 8])) -> Vec<usize> {
        let mut tops: Vec<usize> = (0..self.parent.len()).filter(|&i| self.parent[i].is_none()).collect();
        tops.sort_by_key(|&i| order_key(i));
        tops
    }

    /// Nested-set numbering: (left, right, parent's left, -1 for tops) per row. Subtrees are
    /// numbered depth first, tops and children in start-time order, from 1.
    pub fn nested_sets(&self, order_key: impl Fn(usize) -> (i64, [u8; 8])) -> Vec<(i64, i64, i64)> {
        let n = self.parent.len();
        let mut out = vec![(0i64, 0i64, -1i64); n];
        let mut counter = 0i64;
        for top in self.tops(&order_key) {
            // (row, next child to visit)
            let mut stack = vec![(top, 0usize)];
            counter += 1;
            out[top].0 = counter;
            while let Some((row, next)) = stack.last_mut() {
                let row = *row;
                if let Some(&child) = self.children[row].get(*next) {
                    *next += 1;
                    counter += 1;
                    out[child].0 = counter;
                    out[child].2 = out[row].0;
                    stack.push((child, 0));
                } else {
                    counter += 1;
                    out[row].1 = counter;
                    stack.pop();
                }
            }
        }
        out
    }

    /// For each row: is it in `relation` to some row where `mask` holds ("the row is a child
    /// of a masked row", ...)? Siblings are other spans with the same parent id (roots are
    /// siblings of each other).
    pub fn related_to(&self, relation: Relation, mask: &[bool]) -> Vec<bool> {
        let n = self.parent.len();
        match relation {
            Relation::Child => (0..n).map(|i| self.parent[i].is_some_and(|p| mask[p])).collect(),
            Relation::Parent => (0..n).map(|i| self.children[i].iter().any(|&c| mask[c])).collect(),
            Relation::Sibling => {
                let mut per_parent: HashMap<Option<[u8; 8]>, usize> = HashMap::new();
                for i in (0..n).filter(|&i| mask[i]) {
                    *per_parent.entry(self.parent_ids[i]).or_default() += 1;
                }
                (0..n)
                    .map(|i| {
                        let same = per_parent.get(&self.parent_ids[i]).copied().unwrap_or(0);
                        same > usize::from(mask[i])
                    })
                    .collect()
            }
            Relation::Descendant => {
                // memo: does some proper ancestor of the row hold the mask?
                let mut memo: Vec<Option<bool>> = vec![None; n];
                for start in 0..n {
                    let mut path = Vec::new();
                    let mut i = start;
                    let answer = loop {
                        if let Some(known) = memo[i] {
                            break known;
                        }
                        match self.parent[i] {
                            None => {
                                memo[i] = Some(false);
                                break false;
                            }
                            Some(p) if mask[p] => {
                                memo[i] = Some(true);
                                break true;
                            }
                            Some(p) => {
                                path.push(i);
                                i = p;
                            }
                        }
                    };
                    for j in path {
                        memo[j] = Some(answer);
                    }
                }
                memo.into_iter().map(|m| m.unwrap_or(false)).collect()
            }
            Relation::Ancestor => {
                let mut out = vec![false; n];
                for start in (0..n).filter(|&i| mask[i]) {
                    let mut i = start;
                    while let Some(p) = self.parent[i] {
                        if out[p] {
                            break;
                        }
                        out[p] = true;
                        i = p;
                    }
                }
                out
            }
        }
    }

    /// The root row: the earliest span with no parent id (ties by span id).
    pub fn root(&self, order_key: impl Fn(usize) -> (i64, [u8; 8])) -> Option<usize> {
        (0..self.parent.len()).filter(|&i| self.is_root[i]).min_by_key(|&i| order_key(i))
    }
}

/// What a tree window function computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TreeFunction {
    /// Number of child spans (Int64).
    ChildCount,
    /// Nested-set left number (Int64).
    NestedSetLeft,
    /// Nested-set right number (Int64).
    NestedSetRight,
    /// The parent's nested-set left number, -1 for a top (Int64).
    NestedSetParent,
    /// Whether the span is in this relation to a span where the 4th argument holds (Boolean).
    RelatedTo(Relation),
    /// The 4th argument's value at the trace's root span, on every row (Utf8; "" without a
    /// root, as Tempo has it).
    RootValue,
    /// The 4th argument's value at the row's parent span (its type; null where the parent is
    /// not in the trace), for `parent.` fields.
    ParentValue,
}

impl TreeFunction {
    fn name(self) -> &'static str {
        match self {
            TreeFunction::ChildCount => "tql_child_count",
            TreeFunction::NestedSetLeft => "tql_nested_set_left",
            TreeFunction::NestedSetRight => "tql_nested_set_right",
            TreeFunction::NestedSetParent => "tql_nested_set_parent",
            TreeFunction::RelatedTo(Relation::Child) => "tql_is_child_of",
            TreeFunction::RelatedTo(Relation::Parent) => "tql_is_parent_of",
            TreeFunction::RelatedTo(Relation::Descendant) => "tql_is_descendant_of",
            TreeFunction::RelatedTo(Relation::Ancestor) => "tql_is_ancestor_of",
            TreeFunction::RelatedTo(Relation::Sibling) => "tql_is_sibling_of",
            TreeFunction::RootValue => "tql_root_value",
            TreeFunction::ParentValue => "tql_parent_value",
        }
    }

    fn output(self) -> DataType {
        match self {
            TreeFunction::RelatedTo(_) => DataType::Boolean,
            TreeFunction::RootValue => DataType::Utf8,
            _ => DataType::Int64,
        }
    }

    /// The window function. Arguments: `span_id`, `parent_span_id`, `start_time`, and for
    /// `RelatedTo` a boolean mask, for `RootValue` a string value, for `ParentValue` any
    /// value. Partition by trace id.
    pub fn udwf(self) -> Arc<WindowUDF> {
        Arc::new(WindowUDF::new_from_impl(TreeUdwf {
            function: self,
            signature: Signature::any(4, Volatility::Immutable),
        }))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TreeUdwf {
    function: TreeFunction,
    signature: Signature,
}

impl WindowUDFImpl for TreeUdwf {
    fn name(&self) -> &str {
        self.function.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn partition_evaluator(&self, _args: PartitionEvaluatorArgs) -> DfResult<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(TreeEvaluator(self.function)))
    }

    fn field(&self, args: WindowUDFFieldArgs) -> DfResult<FieldRef> {
        let output = match (self.function, args.input_fields().get(3)) {
            (TreeFunction::ParentValue, Some(value)) => value.data_type().clone(),
            (function, _) => function.output(),
        };
        Ok(Arc::new(Field::new(args.name(), output, true)))
    }
}

#[derive(Debug)]
struct TreeEvaluator(TreeFunction);

/// 8-byte ids of a `FixedSizeBinary(8)` column (anything else reads as zeros / null).
fn ids(array: &dyn Array) -> Vec<Option<[u8; 8]>> {
    match array.as_fixed_size_binary_opt() {
        Some(a) => (0..a.len()).map(|i| if a.is_null(i) { None } else { a.value(i).try_into().ok() }).collect(),
        None => vec![None; array.len()],
    }
}

impl PartitionEvaluator for TreeEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> DfResult<ArrayRef> {
        let [span, parent, start, extra] = values else {
            return Err(datafusion::error::DataFusionError::Internal("tree functions take 4 arguments".into()));
        };
        let span_ids: Vec<[u8; 8]> = ids(span.as_ref()).into_iter().map(|i| i.unwrap_or_default()).collect();
        let parent_ids = ids(parent.as_ref());
        let starts: Vec<i64> = match start.as_primitive_opt::<TimestampNanosecondType>() {
            Some(s) => s.values().to_vec(),
            None => vec![0; num_rows],
        };
        let tree = SpanTree::build(&span_ids, &parent_ids, &starts);
        let key = |i: usize| (starts[i], span_ids[i]);
        Ok(match self.0 {
            TreeFunction::ChildCount => {
                Arc::new(Int64Array::from_iter_values(tree.children.iter().map(|c| c.len() as i64)))
            }
            TreeFunction::NestedSetLeft | TreeFunction::NestedSetRight | TreeFunction::NestedSetParent => {
                let sets = tree.nested_sets(key);
                Arc::new(Int64Array::from_iter_values(sets.iter().map(|(l, r, p)| match self.0 {
                    TreeFunction::NestedSetLeft => *l,
                    TreeFunction::NestedSetRight => *r,
                    _ => *p,
                })))
            }
            TreeFunction::RelatedTo(relation) => {
                let mask: Vec<bool> = match extra.as_boolean_opt() {
                    Some(b) => (0..num_rows).map(|i| b.is_valid(i) && b.value(i)).collect(),
                    None => vec![false; num_rows],
                };
                Arc::new(BooleanArray::from(tree.related_to(relation, &mask)))
            }
            TreeFunction::RootValue => {
                let value = tree
                    .root(key)
                    .and_then(|r| {
                        let s = extra.as_string_opt::<i32>()?;
                        s.is_valid(r).then(|| s.value(r).to_string())
                    })
                    .unwrap_or_default();
                Arc::new(StringArray::from(vec![value; num_rows]))
            }
            TreeFunction::ParentValue => {
                let rows = UInt32Array::from_iter(tree.parent.iter().map(|p| p.and_then(|p| u32::try_from(p).ok())));
                arrow::compute::take(extra.as_ref(), &rows, None)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> [u8; 8] {
        [n; 8]
    }

    /// 1 -> (2 -> (4, 5), 3); 6 is an orphan (parent 9 missing).
    fn sample() -> SpanTree {
        let spans = [id(1), id(2), id(3), id(4), id(5), id(6)];
        let parents = [None, Some(id(1)), Some(id(1)), Some(id(2)), Some(id(2)), Some(id(9))];
        SpanTree::build(&spans, &parents, &[0, 1, 2, 3, 4, 5])
    }

    #[test]
    fn relations() {
        let t = sample();
        let only = |i: usize| (0..6).map(|j| j == i).collect::<Vec<_>>();
        assert_eq!(t.related_to(Relation::Child, &only(0)), [false, true, true, false, false, false]);
        assert_eq!(t.related_to(Relation::Descendant, &only(0)), [false, true, true, true, true, false]);
        assert_eq!(t.related_to(Relation::Parent, &only(3)), [false, true, false, false, false, false]);
        assert_eq!(t.related_to(Relation::Ancestor, &only(3)), [true, true, false, false, false, false]);
        assert_eq!(t.related_to(Relation::Sibling, &only(3)), [false, false, false, false, true, false]);
        assert_eq!(t.children.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn nested_sets_and_root() {
        let t = sample();
        let key = |i: usize| (i as i64, id(i as u8 + 1));
        let sets = t.nested_sets(key);
        assert_eq!(sets[0], (1, 10, -1));
        assert_eq!(sets[1], (2, 7, 1));
        assert_eq!(sets[3], (3, 4, 2));
        assert_eq!(sets[5], (11, 12, -1));
        assert_eq!(t.root(key), Some(0));
    }

    #[test]
    fn parent_values() {
        let t = sample();
        let values: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e", "f"]));
        let span_ids: ArrayRef =
            Arc::new(arrow::array::FixedSizeBinaryArray::try_from_iter((1..=6u8).map(|n| [n; 8])).expect("ids"));
        let parents: ArrayRef = Arc::new(
            arrow::array::FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                [None, Some([1u8; 8]), Some([1; 8]), Some([2; 8]), Some([2; 8]), Some([9; 8])].into_iter(),
                8,
            )
            .expect("parents"),
        );
        let starts: ArrayRef = Arc::new(arrow::array::TimestampNanosecondArray::from(vec![0, 1, 2, 3, 4, 5]));
        let out = TreeEvaluator(TreeFunction::ParentValue)
            .evaluate_all(&[span_ids, parents, starts, values], 6)
            .expect("evaluates");
        let out = out.as_string::<i32>();
        let got: Vec<Option<&str>> = (0..6).map(|i| out.is_valid(i).then(|| out.value(i))).collect();
        assert_eq!(got, [None, Some("a"), Some("a"), Some("b"), Some("b"), None]);
        assert_eq!(t.parent[5], None, "an orphan has no parent row");
    }

    #[test]
    fn cycles_terminate() {
        let spans = [id(1), id(2), id(3)];
        let parents = [Some(id(3)), Some(id(1)), Some(id(2))];
        let t = SpanTree::build(&spans, &parents, &[0, 1, 2]);
        assert_eq!(t.related_to(Relation::Descendant, &[true, true, true]).len(), 3);
        assert_eq!(t.nested_sets(|i| (i as i64, id(0))).len(), 3);
    }
}
