//! The task-local context: isolation between tasks, nesting, and carrying into spawned tasks.

use bemi_core::context::{self, Context, ContextExt, NoScope};
use futures_core::Stream as _;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_tasks_each_see_only_their_own_context() {
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..1000 {
        tasks.spawn(context::scope(json!({"task": n}), async move {
            for step in 0..5 {
                tokio::task::yield_now().await;
                context::merge(json!({"step": step})).unwrap();
                let seen = context::current().unwrap();
                assert_eq!(seen["task"], n, "task {n} saw {seen:?}");
                assert_eq!(seen["step"], step);
            }
            n
        }));
    }
    let mut finished = Vec::new();
    while let Some(n) = tasks.join_next().await {
        finished.push(n.unwrap());
    }
    finished.sort();
    assert_eq!(finished, (0..1000).collect::<Vec<_>>());
}

#[tokio::test]
async fn nested_scopes_shadow_and_restore_the_outer_one() {
    context::scope(json!({"level": "outer"}), async {
        context::scope(json!({"level": "inner"}), async {
            assert_eq!(context::current().unwrap()["level"], "inner");
        })
        .await;
        assert_eq!(context::current().unwrap()["level"], "outer");
        context::sync_scope(json!({"level": "sync"}), || {
            assert_eq!(context::current().unwrap()["level"], "sync");
        });
        assert_eq!(context::current().unwrap()["level"], "outer");
    })
    .await;
    assert_eq!(context::current(), None);
}

#[tokio::test]
async fn set_and_merge_replace_and_extend_inside_a_scope() {
    context::scope(json!({"worker": "MyWorker", "stage": "fetch"}), async {
        context::merge(json!({"stage": "store", "batch": 3})).unwrap();
        assert_eq!(
            serde_json::Value::Object(context::current().unwrap()),
            json!({"worker": "MyWorker", "stage": "store", "batch": 3})
        );
        context::set(json!({"only": true})).unwrap();
        assert_eq!(
            serde_json::Value::Object(context::current().unwrap()),
            json!({"only": true})
        );
    })
    .await;
}

#[tokio::test]
async fn outside_a_scope_changes_are_a_visible_no_op() {
    assert_eq!(context::merge(json!({"a": 1})), Err(NoScope));
    assert_eq!(context::set(json!({"a": 1})), Err(NoScope));
    assert_eq!(context::current(), None);
    assert!(NoScope.to_string().contains("in_current_context"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spawn_helper_carries_the_context_and_plain_spawn_does_not() {
    context::scope(json!({"user_id": 187234}), async {
        let carried = tokio::spawn(async { context::current() }.in_current_context());
        let plain = tokio::spawn(async { context::current() });
        let blocking = tokio::task::spawn_blocking(context::current);
        let snapshot = context::current().unwrap();
        let blocking_with_scope =
            tokio::task::spawn_blocking(move || context::sync_scope(snapshot, context::current));

        assert_eq!(carried.await.unwrap().unwrap()["user_id"], 187234);
        assert_eq!(plain.await.unwrap(), None);
        assert_eq!(blocking.await.unwrap(), None);
        assert_eq!(
            blocking_with_scope.await.unwrap().unwrap()["user_id"],
            187234
        );
    })
    .await;
}

#[tokio::test]
async fn a_carried_context_is_a_copy() {
    context::scope(json!({"user_id": 1}), async {
        let child = tokio::spawn(
            async {
                context::merge(json!({"child": true})).unwrap();
                context::current().unwrap()
            }
            .in_current_context(),
        );
        assert_eq!(child.await.unwrap()["child"], true);
        assert!(!context::current().unwrap().contains_key("child"));
    })
    .await;
}

#[tokio::test]
async fn outside_a_scope_the_helper_runs_without_context() {
    let result = tokio::spawn(async { context::current() }.in_current_context()).await;
    assert_eq!(result.unwrap(), None);
}

#[tokio::test]
async fn streams_are_polled_inside_the_carried_context() {
    struct Probe(u8);
    impl futures_core::Stream for Probe {
        type Item = Option<Context>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(None);
            }
            self.0 -= 1;
            std::task::Poll::Ready(Some(context::current()))
        }
    }
    let stream = context::scope(json!({"batch": 7}), async { Probe(2).in_current_context() }).await;
    let mut stream = std::pin::pin!(stream);
    let mut items = Vec::new();
    while let Some(item) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        items.push(item.unwrap()["batch"].clone());
    }
    assert_eq!(items, [json!(7), json!(7)]);
}

#[tokio::test]
async fn anything_that_converts_into_a_context_is_taken() {
    let map: Context = serde_json::from_value(json!({"from": "map"})).unwrap();
    assert_eq!(
        context::scope(map, async { context::current() })
            .await
            .unwrap()["from"],
        "map"
    );
    let some = Some(json!({"from": "option"}));
    assert_eq!(
        context::scope(some, async { context::current() })
            .await
            .unwrap()["from"],
        "option"
    );
    // No context: the future runs as it is, and an enclosing scope's context stays.
    let none: Option<serde_json::Value> = None;
    assert_eq!(
        context::scope(none, async { context::current() }).await,
        None
    );
    context::scope(json!({"outer": true}), async {
        let seen = context::scope(json!(null), async { context::current() }).await;
        assert_eq!(seen.unwrap()["outer"], true);
        // Not an object: a warning, no panic, and the outer context stays.
        let seen = context::scope(json!([1, 2]), async { context::current() }).await;
        assert_eq!(seen.unwrap()["outer"], true);
        // merge(null) adds nothing; set(null) empties the context.
        context::merge(json!(null)).unwrap();
        assert_eq!(
            serde_json::Value::Object(context::current().unwrap()),
            json!({"outer": true})
        );
        context::set(json!(null)).unwrap();
        assert_eq!(context::current().unwrap(), Context::new());
    })
    .await;
}
