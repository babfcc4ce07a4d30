//! Cedar evaluation cost: the whole policy set vs the scope index, at 1,000 and 10,000 policies, beside the
//! same policies in Rego evaluated by regorus (Rego in Rust), and the full per-request
//! `PolicyStore::authorize` (entities, context, decision) on the example policies.
//!
//! Run: `cargo bench -p gatehouse-tests --bench policy`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use cedar_policy::{Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request};
use gatehouse_engine::policy::{PolicyStore, PrincipalKind, Question, Source};
use gatehouse_engine::policy_index::PolicyIndex;
use gatehouse_tests::bench::{per_call, rego_module, tenant_rules};
use std::collections::HashSet;
use std::str::FromStr;

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(EntityTypeName::from_str(ty).unwrap(), EntityId::new(id))
}

fn main() {
    let authorizer = Authorizer::new();
    for n in [1_000usize, 10_000] {
        // One permit per user and model, plus group rules and a few forbids: the shape of a real tenant list.
        let text: String = tenant_rules(n).map(|r| r.cedar("") + "\n").collect();
        let set = PolicySet::from_str(&text).unwrap();
        let index = PolicyIndex::new(&set);
        let entities = Entities::from_entities(
            [
                Entity::new_no_attrs(uid("User", "u42"), HashSet::from([uid("Group", "team-7")])),
                Entity::new_no_attrs(uid("Group", "team-7"), HashSet::new()),
                Entity::new_no_attrs(uid("Model", "m42"), HashSet::new()),
            ],
            None,
        )
        .unwrap();
        let ctx = Context::from_pairs([("payload_size".to_owned(), cedar_policy::RestrictedExpression::new_long(5))])
            .unwrap();
        let req = Request::new(uid("User", "u42"), uid("Action", "predict"), uid("Model", "m42"), ctx, None).unwrap();
        let full = authorizer.is_authorized(&req, &set, &entities);
        let sliced = index.is_authorized(&authorizer, &req, &entities);
        assert_eq!(full.decision(), sliced.decision());
        let iterations = if n > 5_000 { 200 } else { 2_000 };
        let whole = per_call(iterations, || {
            std::hint::black_box(authorizer.is_authorized(&req, &set, &entities));
        });
        let indexed = per_call(20_000, || {
            std::hint::black_box(index.is_authorized(&authorizer, &req, &entities));
        });
        let mut engine = regorus::Engine::new();
        engine.add_policy("tenants.rego".into(), rego_module(n)).unwrap();
        let input = regorus::Value::from_json_str(
            r#"{"principal": {"id": "u42", "groups": ["team-7"]}, "action": "predict", "resource": "m42",
                "context": {"payload_size": 5}}"#,
        )
        .unwrap();
        engine.set_input(input.clone());
        let allowed = engine.eval_rule("data.gatehouse.allow".into()).unwrap();
        assert_eq!(allowed, regorus::Value::from(full.decision() == cedar_policy::Decision::Allow));
        let rego = per_call(if n > 5_000 { 50 } else { 500 }, || {
            engine.set_input(input.clone());
            std::hint::black_box(engine.eval_rule("data.gatehouse.allow".into()).unwrap());
        });
        println!(
            "{n:>6} policies: Cedar whole set {whole:>9.1} µs   Cedar scope index {indexed:>6.2} µs (speed-up {:>5.0}x)   \
             regorus (same rules in Rego) {rego:>9.1} µs   ({:?})",
            whole / indexed,
            full.decision()
        );
    }

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    let src = |f: &str| Source { name: f.into(), text: std::fs::read_to_string(format!("{dir}/{f}")).unwrap() };
    let store =
        PolicyStore::load(&src("schema.cedarschema"), &[src("models.cedar")], Some(&src("entities.json"))).unwrap();
    let q = Question {
        kind: PrincipalKind::User,
        principal: "alice".into(),
        issuer: "https://idp".into(),
        email: Some("alice@example.com".into()),
        groups: vec!["data-scientists".into()],
        action: "predict".into(),
        resource: "demo".into(),
        context: serde_json::json!({"method": "POST", "path": "/v1/models/demo:predict", "route": "predict",
            "client_ip": {"__extn": {"fn": "ip", "arg": "127.0.0.1"}}, "time": 1_800_000_000i64,
            "scopes": [], "issuer": "https://idp", "payload_size": 30}),
    };
    assert!(store.authorize(&q).allowed);
    let t = per_call(20_000, || {
        std::hint::black_box(store.authorize_uncached(&q));
    });
    let cached = per_call(20_000, || {
        std::hint::black_box(store.authorize(&q));
    });
    println!(
        "PolicyStore::authorize, example policies: evaluated (entities cached, context, decision) {t:.1} µs, \
         decision cached (same principal, model and read context) {cached:.2} µs"
    );
}
