//! `ParentIdExec`: rebuilds `parent_span_id` over a Parquet scan of blocks, which store most
//! parents as row offsets (`spindle_storage::parent`). It reads each partition of its input in
//! order (it never asks for repartitioning, which would interleave rows), so the scan beneath
//! must keep every earlier row of a trace: the `spans` table gives it whole row groups, or rows
//! selected by predicates on `trace_id` alone.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result as DfResult;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use spindle_schema::col;
use spindle_storage::parent::ParentRebuilder;

/// Rebuilds `parent_span_id` and keeps the columns asked for.
#[derive(Debug)]
pub struct ParentIdExec {
    input: Arc<dyn ExecutionPlan>,
    /// For each output column, its position in the input.
    columns: Vec<usize>,
    /// Output position of `parent_span_id`.
    parent: usize,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl ParentIdExec {
    /// Over `input` (which holds the trace id, span id, stored parent id and parent offset
    /// among its columns), outputs the input columns at `columns`, in that order, with the one
    /// named `parent_span_id` rebuilt.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, columns: Vec<usize>) -> DfResult<Self> {
        let schema = Arc::new(input.schema().project(&columns)?);
        let parent = schema.index_of(col::PARENT_SPAN_ID)?;
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        ));
        Ok(Self { input, columns, parent, schema, properties })
    }
}

impl DisplayAs for ParentIdExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ParentIdExec")
    }
}

impl ExecutionPlan for ParentIdExec {
    fn name(&self) -> &'static str {
        "ParentIdExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal("ParentIdExec has one child".into()));
        }
        Ok(Arc::new(Self::try_new(children.swap_remove(0), self.columns.clone())?))
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (columns, parent, schema) = (self.columns.clone(), self.parent, self.schema.clone());
        let mut rebuilder = ParentRebuilder::new();
        let out_schema = schema.clone();
        let stream = input.map(move |batch| {
            let batch = batch?;
            let parents: ArrayRef =
                Arc::new(rebuilder.rebuild(&batch).map_err(|e| DataFusionError::External(Box::new(e)))?);
            let mut out: Vec<ArrayRef> = columns.iter().map(|&i| batch.column(i).clone()).collect();
            out[parent] = parents;
            Ok(RecordBatch::try_new(out_schema.clone(), out)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
