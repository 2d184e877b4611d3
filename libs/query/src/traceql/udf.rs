//! Scalar functions TraceQL plans need beyond DataFusion's own: reading protobuf-encoded OTLP
//! values (scope, event and link attributes), printing ids as Tempo does, and evaluating a
//! condition over the events or links of each span.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    UInt32Array,
};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::error::DataFusionError;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::simplify_expressions::{ExprSimplifier, SimplifyContext};
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};
use spindle_otlp::otlp::common::v1::any_value::Value;
use spindle_schema::AttrType;

/// Reads a protobuf-encoded OTLP `AnyValue` (Binary) as one type; null when it has another.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AnyValueAs {
    ty: AttrType,
    signature: Signature,
}

/// The function reading encoded values as `ty` (`Str`, `Int`, `Float` or `Bool`).
pub fn any_value_as(ty: AttrType) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(AnyValueAs { ty, signature: Signature::any(1, Volatility::Immutable) }))
}

impl ScalarUDFImpl for AnyValueAs {
    fn name(&self) -> &str {
        match self.ty {
            AttrType::Str => "tql_any_value_str",
            AttrType::Int => "tql_any_value_int",
            AttrType::Float => "tql_any_value_float",
            AttrType::Bool => "tql_any_value_bool",
            AttrType::Other => "tql_any_value_other",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.ty.data_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let Some(bytes) = input.as_binary_opt::<i32>() else {
            return Ok(ColumnarValue::Array(arrow::array::new_null_array(&self.ty.data_type(), input.len())));
        };
        let values =
            (0..bytes.len()).map(
                |i| {
                    if bytes.is_null(i) {
                        None
                    } else {
                        spindle_otlp::decode_any(bytes.value(i)).value
                    }
                },
            );
        let out: ArrayRef = match self.ty {
            AttrType::Str => {
                let mut b = StringBuilder::new();
                values.for_each(|v| match v {
                    Some(Value::StringValue(s)) => b.append_value(s),
                    _ => b.append_null(),
                });
                Arc::new(b.finish())
            }
            AttrType::Int => {
                let mut b = Int64Builder::new();
                values.for_each(|v| b.append_option(if let Some(Value::IntValue(i)) = v { Some(i) } else { None }));
                Arc::new(b.finish())
            }
            AttrType::Float => {
                let mut b = Float64Builder::new();
                values.for_each(|v| b.append_option(if let Some(Value::DoubleValue(f)) = v { Some(f) } else { None }));
                Arc::new(b.finish())
            }
            AttrType::Bool => {
                let mut b = BooleanBuilder::new();
                values.for_each(|v| b.append_option(if let Some(Value::BoolValue(x)) = v { Some(x) } else { None }));
                Arc::new(b.finish())
            }
            AttrType::Other => input.clone(),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// Compares the elements of an encoded OTLP `ArrayValue` with a literal (Tempo 3.0's
/// array-aware operators): `=`, `<`, `=~`, ... hold when one element compares so; `!=` and `!~`
/// hold when the array has elements of the literal's kind and none equals (matches) it. Elements
/// pair by type as scalar values do (numbers numerically, strings as text, booleans with `=` and
/// `!=` only). Null when the value is not an array: its scalar forms are compared elsewhere.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ArrayCompare {
    op: spindle_traceql::BinaryOp,
    signature: Signature,
}

/// The function `tql_array_<op>(encoded value, literal)`.
pub fn array_compare(op: spindle_traceql::BinaryOp) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(ArrayCompare { op, signature: Signature::any(2, Volatility::Immutable) }))
}

/// Name prefix of the array comparison functions (the row-group pruning recognises them).
pub const ARRAY_COMPARE_PREFIX: &str = "tql_array_";

/// A literal an array's elements are compared with.
enum Literal {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Regex(regex::Regex),
}

impl ArrayCompare {
    /// Whether one element compares with the literal as `op` says (`None`: not comparable).
    fn element(&self, v: &Value, lit: &Literal) -> Option<bool> {
        use spindle_traceql::BinaryOp as B;
        use std::cmp::Ordering;
        let ord = |o: Ordering| match self.op {
            B::Eq | B::Ne => o == Ordering::Equal,
            B::Lt => o == Ordering::Less,
            B::Le => o != Ordering::Greater,
            B::Gt => o == Ordering::Greater,
            B::Ge => o != Ordering::Less,
            _ => false,
        };
        match (v, lit) {
            (Value::StringValue(s), Literal::Regex(re)) => Some(re.is_match(s)),
            (_, Literal::Regex(_)) => None,
            (Value::StringValue(s), Literal::Str(l)) => Some(ord(s.as_bytes().cmp(l.as_bytes()))),
            (Value::IntValue(i), Literal::Int(l)) => Some(ord(i.cmp(l))),
            (Value::IntValue(i), Literal::Float(l)) => (*i as f64).partial_cmp(l).map(ord),
            (Value::DoubleValue(f), Literal::Int(l)) => f.partial_cmp(&(*l as f64)).map(ord),
            (Value::DoubleValue(f), Literal::Float(l)) => f.partial_cmp(l).map(ord),
            (Value::BoolValue(b), Literal::Bool(l)) if matches!(self.op, B::Eq | B::Ne) => Some(b == l),
            _ => None,
        }
    }
}

impl ScalarUDFImpl for ArrayCompare {
    fn name(&self) -> &str {
        use spindle_traceql::BinaryOp as B;
        match self.op {
            B::Eq => "tql_array_eq",
            B::Ne => "tql_array_ne",
            B::Lt => "tql_array_lt",
            B::Le => "tql_array_le",
            B::Gt => "tql_array_gt",
            B::Ge => "tql_array_ge",
            B::Regex => "tql_array_regex",
            B::NotRegex => "tql_array_not_regex",
            _ => "tql_array_other",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        use datafusion::common::ScalarValue as S;
        use spindle_traceql::BinaryOp as B;
        let input = args.args[0].to_array(args.number_rows)?;
        let literal = match &args.args[1] {
            ColumnarValue::Scalar(S::Utf8(Some(p))) if matches!(self.op, B::Regex | B::NotRegex) => Literal::Regex(
                regex::Regex::new(&format!("^(?s:{p})$")).map_err(|e| DataFusionError::Plan(e.to_string()))?,
            ),
            ColumnarValue::Scalar(S::Utf8(Some(s))) => Literal::Str(s.clone()),
            ColumnarValue::Scalar(S::Int64(Some(i))) => Literal::Int(*i),
            ColumnarValue::Scalar(S::Float64(Some(f))) => Literal::Float(*f),
            ColumnarValue::Scalar(S::Boolean(Some(b))) => Literal::Bool(*b),
            _ => return Ok(ColumnarValue::Array(arrow::array::new_null_array(&DataType::Boolean, input.len()))),
        };
        let negated = matches!(self.op, B::Ne | B::NotRegex);
        let mut out = BooleanBuilder::with_capacity(input.len());
        let Some(bytes) = input.as_binary_opt::<i32>() else {
            return Ok(ColumnarValue::Array(arrow::array::new_null_array(&DataType::Boolean, input.len())));
        };
        for i in 0..bytes.len() {
            let value = if bytes.is_null(i) { None } else { spindle_otlp::decode_any(bytes.value(i)).value };
            let Some(Value::ArrayValue(array)) = value else {
                out.append_null();
                continue;
            };
            let results =
                array.values.iter().filter_map(|e| e.value.as_ref()).filter_map(|e| self.element(e, &literal));
            let (mut comparable, mut any) = (false, false);
            for r in results {
                comparable = true;
                any |= r;
            }
            out.append_value(if negated { comparable && !any } else { any });
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Lower-case hex of a binary id, as Tempo prints ids: trace ids without leading zeros,
/// span ids at full width.
#[derive(Debug, PartialEq, Eq, Hash)]
struct HexId {
    strip_leading_zeros: bool,
    signature: Signature,
}

/// The function printing ids (`FixedSizeBinary` or `Binary`) as hex; `strip_leading_zeros` for
/// trace ids (`"0"` for an all-zero id).
pub fn hex_id(strip_leading_zeros: bool) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(HexId {
        strip_leading_zeros,
        signature: Signature::any(1, Volatility::Immutable),
    }))
}

impl ScalarUDFImpl for HexId {
    fn name(&self) -> &str {
        if self.strip_leading_zeros {
            "tql_trace_id_hex"
        } else {
            "tql_span_id_hex"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let mut b = StringBuilder::new();
        let mut push = |v: Option<&[u8]>| match v {
            None => b.append_null(),
            Some(bytes) if self.strip_leading_zeros => b.append_value(spindle_types::trace_id_hex(bytes)),
            Some(bytes) => b.append_value(hex::encode(bytes)),
        };
        if let Some(a) = input.as_fixed_size_binary_opt() {
            (0..a.len()).for_each(|i| push(a.is_valid(i).then(|| a.value(i))));
        } else if let Some(a) = input.as_binary_opt::<i32>() {
            (0..a.len()).for_each(|i| push(a.is_valid(i).then(|| a.value(i))));
        } else {
            (0..input.len()).for_each(|_| push(None));
        }
        Ok(ColumnarValue::Array(Arc::new(b.finish())))
    }
}

/// Which nested list of a span a condition runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elements {
    /// The `events` column.
    Events,
    /// The `links` column.
    Links,
}

/// Evaluates a condition over every element (event or link) of each span: true when it holds
/// for at least one. Arguments: the list column, then span-level values the condition also
/// reads (repeated for each element of their span).
#[derive(Debug)]
struct AnyElement {
    id: u64,
    name: String,
    predicate: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
    signature: Signature,
}

impl PartialEq for AnyElement {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for AnyElement {}

impl Hash for AnyElement {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state)
    }
}

/// Builds the function testing `condition` (an expression over the element's fields, named as
/// in the list's struct, and over columns `__span_0`, `__span_1`, ... holding `span_values`) on
/// every element of `list` (an expression of the events or links column).
pub fn any_element(
    list: Expr,
    element: &arrow::datatypes::Fields,
    condition: Expr,
    span_values: Vec<(Expr, DataType)>,
) -> DfResult<Expr> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut fields: Vec<Field> = element.iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    for (i, (_, ty)) in span_values.iter().enumerate() {
        fields.push(Field::new(format!("__span_{i}"), ty.clone(), true));
    }
    let schema = Arc::new(Schema::new(fields));
    let df_schema = Arc::new(DFSchema::try_from(schema.as_ref().clone())?);
    // Simplified first, as the optimizer does for plan expressions: some functions (coalesce)
    // have no physical form of their own.
    let context = SimplifyContext::builder().with_schema(df_schema.clone()).build();
    let condition = ExprSimplifier::new(context).simplify(condition)?;
    let predicate =
        create_physical_expr(&condition, &df_schema, &ExecutionProps::new(), &PhysicalPlanningContext::default())?;
    let udf = ScalarUDF::new_from_impl(AnyElement {
        id,
        name: format!("tql_any_element_{id}"),
        predicate,
        schema,
        signature: Signature::variadic_any(Volatility::Immutable),
    });
    let mut args = vec![list];
    args.extend(span_values.into_iter().map(|(e, _)| e));
    Ok(udf.call(args))
}

impl ScalarUDFImpl for AnyElement {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let list = args.args[0].to_array(rows)?;
        let list = list
            .as_list_opt::<i32>()
            .ok_or_else(|| DataFusionError::Internal("element condition over a non-list column".into()))?;
        let offsets = list.value_offsets();
        let (first, last) = (offsets[0] as usize, offsets[rows] as usize);
        let items = list.values().slice(first, last - first);
        let items = items
            .as_struct_opt()
            .ok_or_else(|| DataFusionError::Internal("element condition over a list of non-structs".into()))?;
        // The span row of every element.
        let mut parent = Vec::with_capacity(last - first);
        for r in 0..rows {
            let n = (offsets[r + 1] - offsets[r]) as usize;
            parent.extend(std::iter::repeat_n(r as u32, if list.is_null(r) { 0 } else { n }));
        }
        if parent.len() != items.len() {
            // Null lists with entries: skip them by evaluating nothing.
            return Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(vec![false; rows]))));
        }
        let parent = UInt32Array::from(parent);
        let mut columns: Vec<ArrayRef> = items.columns().to_vec();
        for value in &args.args[1..] {
            columns.push(take(value.to_array(rows)?.as_ref(), &parent, None)?);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        let matched = self.predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
        let matched = matched
            .as_boolean_opt()
            .ok_or_else(|| DataFusionError::Internal("element condition is not boolean".into()))?;
        let mut out = vec![false; rows];
        for (i, r) in parent.values().iter().enumerate() {
            if matched.is_valid(i) && matched.value(i) {
                out[*r as usize] = true;
            }
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(out))))
    }
}
