//! Property tests of the state machine and the event log, against the real repositories
//! (SQLite, or PostgreSQL with `KILN_TEST_DATABASE=postgres`, a database per case):
//! whatever operations arrive in whatever order, only legal transitions happen, sequence
//! numbers run 1, 2, 3 … without gaps, nothing is appended after the end, and a replay
//! from any point equals the tail of the log.

use std::time::Duration;

use chrono::Utc;
use kiln::{
    db::{self, Enqueued, Finish, Transition},
    tasks::{Artifact, NewTask, TaskId, TaskKind, TaskStatus},
};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Op {
    Claim,
    Progress(u8),
    Artifact(u8),
    Succeed,
    Fail,
    Cancel,
    ExpireLease,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Claim),
        (0u8..=100).prop_map(Op::Progress),
        (0u8..3).prop_map(Op::Artifact),
        Just(Op::Succeed),
        Just(Op::Fail),
        Just(Op::Cancel),
        Just(Op::ExpireLease),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_operations_keeps_the_state_machine_and_the_log_sound(ops in proptest::collection::vec(op(), 1..25)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let db = db::connect(&crate::helpers::database_url(dir.path()), 2).await.unwrap();
            let id = TaskId::new();
            let new = NewTask {
                id, kind: TaskKind::TextTo3d, model: "m".into(), channel: "c".into(),
                prompt: Some("p".into()), picture_id: None, params: json!({}), client_secret: None, owner_id: None, token_id: None, webhook_url: None,
            };
            let Enqueued::Created(_, first) = db.enqueue(&new, 10, None, &Default::default()).await.unwrap() else { panic!("not created") };
            assert_eq!(first.seq, 1);
            let mut status = TaskStatus::Queued;
            for op in ops {
                let before = status;
                match op {
                    Op::Claim => {
                        let claimed = db.claim("c", "me", &kiln::db::ClaimTerms {
                            lease: Duration::from_secs(30),
                            deadline: Duration::from_secs(60),
                            window: 10,
                            max_running: 2,
                        })
                        .await
                        .unwrap();
                        if claimed.is_some() {
                            assert!(before == TaskStatus::Queued || before == TaskStatus::Running, "claimed from {before:?}");
                            status = TaskStatus::Running;
                        }
                    }
                    Op::ExpireLease => { db.release_leases().await.unwrap(); }
                    Op::Progress(p) => {
                        let event = db.record_progress(id, p, "s").await.unwrap();
                        assert_eq!(event.is_some(), before == TaskStatus::Running);
                    }
                    Op::Artifact(n) => {
                        let artifact = Artifact {
                            id: uuid::Uuid::new_v4(), task_id: id, name: format!("f{n}.bin"), role: "model".into(),
                            key: format!("outputs/{id}/f{n}.bin"), content_type: "application/octet-stream".into(),
                            size: 1, sha256: "00".into(), metadata: json!({}), created_at: Utc::now(), expired_at: None,
                        };
                        let event = db.add_artifact(&artifact, json!({ "name": artifact.name })).await.unwrap();
                        if before != TaskStatus::Running {
                            assert!(event.is_none());
                        }
                    }
                    Op::Succeed | Op::Fail | Op::Cancel => {
                        let finish = match op {
                            Op::Succeed => Finish::Succeeded { metadata: json!({}) },
                            Op::Fail => Finish::Failed { code: "x".into(), message: "x".into() },
                            _ => Finish::Canceled,
                        };
                        let next = finish.status();
                        match db.finish(id, &finish, 10).await.unwrap() {
                            Transition::Done(task, _) => {
                                assert!(before.can_become(next), "{before:?} -> {next:?} was allowed");
                                assert_eq!(task.status, next);
                                status = next;
                            }
                            Transition::Refused(task) => {
                                assert!(!before.can_become(next), "{before:?} -> {next:?} was refused");
                                assert_eq!(task.status, before);
                            }
                            Transition::NotFound => panic!("task vanished"),
                        }
                    }
                }
                let stored = db.get_task(id).await.unwrap().unwrap();
                assert_eq!(stored.status, status);
            }
            let log = db.list_events(id, 0).await.unwrap();
            let seqs: Vec<i64> = log.iter().map(|e| e.seq).collect();
            let expected: Vec<i64> = (1..=log.len() as i64).collect();
            assert_eq!(seqs, expected, "sequence numbers run without gaps");
            let terminal: Vec<usize> = log.iter().enumerate().filter(|(_, e)| e.kind.is_terminal()).map(|(i, _)| i).collect();
            assert!(terminal.len() <= 1, "at most one terminal event");
            if let Some(&at) = terminal.first() {
                assert_eq!(at, log.len() - 1, "nothing after the terminal event");
            }
            for after in 0..log.len() {
                let tail = db.list_events(id, after as i64).await.unwrap();
                assert_eq!(tail.len(), log.len() - after);
                assert!(tail.iter().zip(&log[after..]).all(|(a, b)| a.seq == b.seq && a.kind == b.kind));
            }
        });
    }
}
