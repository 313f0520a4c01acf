//! The planner's rules on small graphs with stand-in operators.

use crate::graph::{GraphError, GraphNode};
use crate::operator::{
    BuildContext, BuildError, FieldSet, Operator, OperatorSpec, Stream, TimeUse,
};
use crate::value::parse_path;

use super::{graph_nodes, NodeInfo, Plan, PlanError};

/// An operator that reads `field`, places events in time as told, and
/// emits a changelog when `aggregates`.
struct Stub {
    field: &'static str,
    time_use: TimeUse,
    aggregates: bool,
    refuses_changelog: bool,
}

impl Stub {
    fn new(field: &'static str) -> Stub {
        Stub {
            field,
            time_use: TimeUse::Untimed,
            aggregates: false,
            refuses_changelog: false,
        }
    }
}

impl OperatorSpec for Stub {
    fn input_reads(&self, downstream: &FieldSet) -> FieldSet {
        let mut reads = if self.aggregates {
            FieldSet::empty()
        } else {
            downstream.clone()
        };
        reads.insert(parse_path(self.field));
        reads
    }

    fn is_stateful(&self) -> bool {
        self.aggregates
    }

    fn time_use(&self) -> TimeUse {
        self.time_use
    }

    fn output_stream(&self, input: Stream) -> Stream {
        if self.aggregates {
            Stream::Changelog {
                settles_after: None,
            }
        } else {
            input
        }
    }

    fn check_input(&self, input: Stream) -> Result<(), crate::error::Invalid> {
        if self.refuses_changelog && input.is_changelog() {
            return Err("cannot read a changelog".into());
        }
        Ok(())
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Operator>, BuildError> {
        unreachable!("the planner never builds operators")
    }
}

/// Two sources `a` and `b` feeding transform `t`, read by sink `out`.
fn two_sources(t: &Stub, a: Option<bool>, b: Option<bool>) -> Result<Plan, Vec<PlanError>> {
    let inputs = ["a".to_string(), "b".to_string()];
    let out = ["t".to_string()];
    let nodes = graph_nodes(["a", "b"], [("t", &inputs[..])], [("out", &out[..])]);
    let info = [
        NodeInfo::Source { event_time: a },
        NodeInfo::Source { event_time: b },
        NodeInfo::Transform { spec: Some(t) },
        NodeInfo::Sink,
    ];
    Plan::new(nodes, &info)
}

fn timed(time_use: TimeUse) -> Stub {
    Stub {
        time_use,
        ..Stub::new("x")
    }
}

#[test]
fn a_window_over_sources_that_all_or_none_have_event_time_is_planned() {
    let all = two_sources(&timed(TimeUse::Window), Some(true), Some(true)).unwrap();
    assert!(all.event_time[2]);
    let none = two_sources(&timed(TimeUse::Window), Some(false), Some(false)).unwrap();
    assert!(!none.event_time[2]);
}

#[test]
fn a_window_over_a_mix_of_event_and_processing_time_is_refused() {
    let errors = two_sources(&timed(TimeUse::Window), Some(true), Some(false)).unwrap_err();
    assert_eq!(
        errors,
        vec![PlanError::EventTime {
            node: 2,
            time_use: TimeUse::Window,
            missing: vec![1]
        }]
    );
}

#[test]
fn an_event_time_window_needs_event_time_from_every_source() {
    let errors = two_sources(&timed(TimeUse::EventWindow), Some(false), Some(false)).unwrap_err();
    assert!(matches!(&errors[..], [PlanError::EventTime { missing, .. }] if missing == &[0, 1]));
    assert!(two_sources(&timed(TimeUse::EventWindow), Some(true), Some(true)).is_ok());
}

#[test]
fn sources_with_invalid_options_are_not_held_against_a_window() {
    assert!(two_sources(&timed(TimeUse::EventWindow), None, Some(false)).is_ok());
}

#[test]
fn untimed_transforms_do_not_care_about_event_time() {
    assert!(two_sources(&Stub::new("x"), Some(true), Some(false)).is_ok());
}

#[test]
fn event_time_messages_name_the_transform_and_the_sources() {
    let nodes = graph_nodes(["a", "b"], [("t", &[][..])], [("out", &[][..])]);
    let window = PlanError::EventTime {
        node: 2,
        time_use: TimeUse::Window,
        missing: vec![1],
    };
    assert_eq!(
        window.describe(&nodes),
        "the window of `t` uses event time, but source(s) `b` provide none"
    );
    let period = PlanError::EventTime {
        node: 2,
        time_use: TimeUse::Period,
        missing: vec![0, 1],
    };
    assert_eq!(
        period.describe(&nodes),
        "`t` counts `within` in event time, as other sources feeding it have it, but source(s) `a`, `b` provide none"
    );
    assert_ne!(window.hint(), period.hint());
}

/// `src -> agg -> reader -> out`.
fn chain(agg: &Stub, reader: &Stub) -> (Vec<GraphNode>, Result<Plan, Vec<PlanError>>) {
    let (i_agg, i_reader, i_out) = (
        ["src".to_string()],
        ["agg".to_string()],
        ["reader".to_string()],
    );
    let nodes = graph_nodes(
        ["src"],
        [("agg", &i_agg[..]), ("reader", &i_reader[..])],
        [("out", &i_out[..])],
    );
    let info = [
        NodeInfo::Source {
            event_time: Some(false),
        },
        NodeInfo::Transform { spec: Some(agg) },
        NodeInfo::Transform { spec: Some(reader) },
        NodeInfo::Sink,
    ];
    (nodes.clone(), Plan::new(nodes, &info))
}

#[test]
fn a_transform_reading_a_changelog_it_cannot_read_is_refused_with_its_reason() {
    let agg = Stub {
        aggregates: true,
        ..Stub::new("n")
    };
    let reader = Stub {
        refuses_changelog: true,
        ..Stub::new("m")
    };
    let (nodes, plan) = chain(&agg, &reader);
    let errors = plan.unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].describe(&nodes),
        "transform `reader` cannot read a changelog"
    );
}

#[test]
fn streams_reads_and_build_contexts_follow_the_graph() {
    let agg = Stub {
        aggregates: true,
        ..Stub::new("n")
    };
    let reader = Stub::new("m");
    let (_, plan) = chain(&agg, &reader);
    let plan = plan.unwrap();
    // The source decodes only what the aggregate reads.
    assert_eq!(plan.reads[0], {
        let mut f = FieldSet::empty();
        f.insert(parse_path("n"));
        f
    });
    assert!(plan.streams[1].is_changelog());
    let ctx = plan.build_context(2, 8);
    assert_eq!(&*ctx.name, "reader");
    assert_eq!(ctx.key_groups, 8);
    assert!(ctx.input.is_changelog());
    assert!(!ctx.event_time);
    assert!(!plan.build_context(1, 8).input.is_changelog());
}

#[test]
fn graph_mistakes_are_reported_alone() {
    let inputs = ["nowhere".to_string()];
    let nodes = graph_nodes(["a"], [], [("out", &inputs[..])]);
    let info = [
        NodeInfo::Source {
            event_time: Some(false),
        },
        NodeInfo::Sink,
    ];
    let errors = Plan::new(nodes, &info).unwrap_err();
    assert!(errors.iter().all(|e| matches!(
        e,
        PlanError::Graph(GraphError::UnknownInput { .. } | GraphError::Unused { .. })
    )));
    assert!(!errors.is_empty());
}
