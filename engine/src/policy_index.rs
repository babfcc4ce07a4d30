//! A scope index over the policy set: for each request only the policies whose principal, action and resource
//! constraints (`==`, `in`, `is`) can match are evaluated. A policy whose scope cannot match is never
//! satisfied and raises no error (Cedar evaluates the scope before the conditions), so the decision, the
//! determining policies and the errors are those of the whole set; the differential test below checks it.
//! Sliced sets are cached by the set of candidates, so steady traffic reuses a handful of them.

use crate::memo::Memo;
use cedar_policy::{
    ActionConstraint, Authorizer, Entities, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint, Request,
    ResourceConstraint, Response,
};
use std::collections::HashMap;
use std::sync::Arc;

type Bits = Vec<u64>;

fn set(bits: &mut Bits, i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

fn or_into(dst: &mut Bits, src: &Bits) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d |= s;
    }
}

/// Candidates by one scope (principal or resource).
#[derive(Debug, Default)]
struct Scope {
    any: Bits,
    eq: HashMap<EntityUid, Bits>,
    within: HashMap<EntityUid, Bits>,
    is: HashMap<EntityTypeName, Bits>,
    is_in: HashMap<(EntityTypeName, EntityUid), Bits>,
}

enum Constraint {
    Any,
    Eq(EntityUid),
    In(EntityUid),
    Is(EntityTypeName),
    IsIn(EntityTypeName, EntityUid),
}

impl From<PrincipalConstraint> for Constraint {
    fn from(c: PrincipalConstraint) -> Self {
        match c {
            PrincipalConstraint::Any => Constraint::Any,
            PrincipalConstraint::Eq(u) => Constraint::Eq(u),
            PrincipalConstraint::In(u) => Constraint::In(u),
            PrincipalConstraint::Is(t) => Constraint::Is(t),
            PrincipalConstraint::IsIn(t, u) => Constraint::IsIn(t, u),
        }
    }
}

impl From<ResourceConstraint> for Constraint {
    fn from(c: ResourceConstraint) -> Self {
        match c {
            ResourceConstraint::Any => Constraint::Any,
            ResourceConstraint::Eq(u) => Constraint::Eq(u),
            ResourceConstraint::In(u) => Constraint::In(u),
            ResourceConstraint::Is(t) => Constraint::Is(t),
            ResourceConstraint::IsIn(t, u) => Constraint::IsIn(t, u),
        }
    }
}

impl Scope {
    fn new(words: usize) -> Scope {
        Scope { any: vec![0; words], ..Scope::default() }
    }

    fn add(&mut self, i: usize, c: Constraint, words: usize) {
        let slot = match c {
            Constraint::Any => &mut self.any,
            Constraint::Eq(u) => self.eq.entry(u).or_insert_with(|| vec![0; words]),
            Constraint::In(u) => self.within.entry(u).or_insert_with(|| vec![0; words]),
            Constraint::Is(t) => self.is.entry(t).or_insert_with(|| vec![0; words]),
            Constraint::IsIn(t, u) => self.is_in.entry((t, u)).or_insert_with(|| vec![0; words]),
        };
        set(slot, i);
    }

    /// Policies whose constraint admits `uid` (with `ancestors`).
    fn candidates(&self, uid: &EntityUid, ancestors: &[EntityUid]) -> Bits {
        let mut out = self.any.clone();
        if let Some(b) = self.eq.get(uid) {
            or_into(&mut out, b);
        }
        let ty = uid.type_name();
        if let Some(b) = self.is.get(ty) {
            or_into(&mut out, b);
        }
        for a in std::iter::once(uid).chain(ancestors) {
            if let Some(b) = self.within.get(a) {
                or_into(&mut out, b);
            }
            if !self.is_in.is_empty()
                && let Some(b) = self.is_in.get(&(ty.clone(), a.clone()))
            {
                or_into(&mut out, b);
            }
        }
        out
    }
}

/// The policies of a set, indexed by scope.
#[derive(Debug)]
pub struct PolicyIndex {
    all: PolicySet,
    policies: Vec<Policy>,
    principal: Scope,
    action: Scope,
    resource: Scope,
    slices: Memo<Bits, Arc<PolicySet>>,
}

/// Most distinct sliced sets kept.
const MAX_SLICES: usize = 4096;

impl PolicyIndex {
    /// Indexes every static policy of `set` (templates are not indexed: the store refuses them).
    pub fn new(set: &PolicySet) -> PolicyIndex {
        let policies: Vec<Policy> = set.policies().cloned().collect();
        let words = policies.len().div_ceil(64).max(1);
        let (mut principal, mut action, mut resource) = (Scope::new(words), Scope::new(words), Scope::new(words));
        for (i, p) in policies.iter().enumerate() {
            principal.add(i, p.principal_constraint().into(), words);
            resource.add(i, p.resource_constraint().into(), words);
            match p.action_constraint() {
                ActionConstraint::Any => action.add(i, Constraint::Any, words),
                ActionConstraint::Eq(a) => action.add(i, Constraint::Eq(a), words),
                ActionConstraint::In(list) => {
                    for a in list {
                        action.add(i, Constraint::In(a), words);
                    }
                }
            }
        }
        PolicyIndex { all: set.clone(), policies, principal, action, resource, slices: Memo::new(MAX_SLICES) }
    }

    /// The policies that can match a request, as a set (cached by candidates).
    fn slice(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Arc<PolicySet> {
        let ancestors = |u: &EntityUid| -> Vec<EntityUid> {
            entities.ancestors(u).map(|it| it.cloned().collect()).unwrap_or_default()
        };
        let mut bits = self.principal.candidates(principal, &ancestors(principal));
        for (b, a) in bits.iter_mut().zip(self.action.candidates(action, &ancestors(action))) {
            *b &= a;
        }
        for (b, r) in bits.iter_mut().zip(self.resource.candidates(resource, &ancestors(resource))) {
            *b &= r;
        }
        if let Some(s) = self.slices.get(&bits) {
            return s;
        }
        let chosen = self
            .policies
            .iter()
            .enumerate()
            .filter(|(i, _)| bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0))
            .map(|(_, p)| p.clone());
        let set = Arc::new(PolicySet::from_policies(chosen).unwrap_or_default());
        self.slices.insert(bits, Arc::clone(&set));
        set
    }

    /// Authorizes `request` against the policies that can match it.
    pub fn is_authorized(&self, authorizer: &Authorizer, request: &Request, entities: &Entities) -> Response {
        match (request.principal(), request.action(), request.resource()) {
            (Some(p), Some(a), Some(r)) => authorizer.is_authorized(request, &self.slice(p, a, r, entities), entities),
            // Unknown (partial) request components: no slicing is sound, evaluate everything.
            _ => authorizer.is_authorized(request, &self.all, entities),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Differential test: on generated policies, entity hierarchies and requests, the index answers exactly
    //! what evaluating the whole set answers: decision, determining policies and errors.
    use super::*;
    use cedar_policy::{Context, Entity, EntityId, RestrictedExpression};
    use std::collections::{HashMap, HashSet};
    use std::str::FromStr;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn uid(ty: &str, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(EntityTypeName::from_str(ty).unwrap(), EntityId::new(id))
    }

    fn principal(rng: &mut Rng) -> String {
        match rng.below(6) {
            0 => "principal".into(),
            1 => format!("principal == User::\"u{}\"", rng.below(8)),
            2 => format!("principal in Group::\"g{}\"", rng.below(6)),
            3 => "principal is User".into(),
            4 => format!("principal is User in Group::\"g{}\"", rng.below(6)),
            _ => "principal is Service".into(),
        }
    }

    fn action(rng: &mut Rng) -> String {
        match rng.below(4) {
            0 => "action".into(),
            1 => format!("action == Action::\"a{}\"", rng.below(4)),
            2 => format!("action in [Action::\"a{}\", Action::\"a{}\"]", rng.below(4), rng.below(4)),
            _ => "action in Action::\"all\"".into(),
        }
    }

    fn resource(rng: &mut Rng) -> String {
        match rng.below(5) {
            0 => "resource".into(),
            1 => format!("resource == Model::\"m{}\"", rng.below(5)),
            2 => format!("resource in Folder::\"f{}\"", rng.below(3)),
            3 => "resource is Model".into(),
            _ => format!("resource is Model in Folder::\"f{}\"", rng.below(3)),
        }
    }

    fn condition(rng: &mut Rng) -> &'static str {
        match rng.below(5) {
            0 => "",
            1 => "when { context.size > 10 }",
            2 => "unless { context.size > 50 }",
            // Errors when the resource lacks `tier`: errors must survive slicing.
            3 => "when { resource.tier == \"gold\" }",
            _ => "when { principal has level && principal.level > 2 }",
        }
    }

    fn entities(rng: &mut Rng) -> Entities {
        let mut list = Vec::new();
        for g in 0..6 {
            // Groups form a DAG: g_i may be inside g_j for j > i.
            let parents: HashSet<EntityUid> =
                (g + 1..6).filter(|_| rng.below(3) == 0).map(|j| uid("Group", &format!("g{j}"))).collect();
            list.push(Entity::new_no_attrs(uid("Group", &format!("g{g}")), parents));
        }
        for u in 0..8 {
            let parents: HashSet<EntityUid> =
                (0..6).filter(|_| rng.below(3) == 0).map(|j| uid("Group", &format!("g{j}"))).collect();
            let mut attrs = HashMap::new();
            if rng.below(2) == 0 {
                attrs.insert("level".to_owned(), RestrictedExpression::new_long(rng.below(5) as i64));
            }
            list.push(Entity::new(uid("User", &format!("u{u}")), attrs, parents).unwrap());
        }
        list.push(Entity::new_no_attrs(uid("Service", "s0"), HashSet::new()));
        for m in 0..5 {
            let parents: HashSet<EntityUid> =
                (0..3).filter(|_| rng.below(2) == 0).map(|f| uid("Folder", &format!("f{f}"))).collect();
            let mut attrs = HashMap::new();
            if rng.below(2) == 0 {
                attrs.insert("tier".to_owned(), RestrictedExpression::new_string(["gold", "tin"][m % 2].into()));
            }
            list.push(Entity::new(uid("Model", &format!("m{m}")), attrs, parents).unwrap());
        }
        for f in 0..3 {
            list.push(Entity::new_no_attrs(uid("Folder", &format!("f{f}")), HashSet::new()));
        }
        list.push(Entity::new_no_attrs(uid("Action", "all"), HashSet::new()));
        for a in 0..4 {
            let parents: HashSet<EntityUid> = if a % 2 == 0 { [uid("Action", "all")].into() } else { HashSet::new() };
            list.push(Entity::new_no_attrs(uid("Action", &format!("a{a}")), parents));
        }
        Entities::from_entities(list, None).unwrap()
    }

    #[test]
    fn sliced_evaluation_equals_full_evaluation() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let authorizer = Authorizer::new();
        let mut compared = 0;
        let mut allowed = 0;
        let mut with_errors = 0;
        for round in 0..40 {
            let mut text = String::new();
            for i in 0..(20 + round * 5) {
                let effect = if rng.below(4) == 0 { "forbid" } else { "permit" };
                text.push_str(&format!(
                    "@id(\"p{i}\") {effect}({}, {}, {}) {};\n",
                    principal(&mut rng),
                    action(&mut rng),
                    resource(&mut rng),
                    condition(&mut rng)
                ));
            }
            let parsed = PolicySet::from_str(&text).unwrap();
            let mut set = PolicySet::new();
            for p in parsed.policies() {
                set.add(p.new_id(cedar_policy::PolicyId::new(p.annotation("id").unwrap()))).unwrap();
            }
            let index = PolicyIndex::new(&set);
            let entities = entities(&mut rng);
            for _ in 0..60 {
                let p =
                    if rng.below(8) == 0 { uid("Service", "s0") } else { uid("User", &format!("u{}", rng.below(9))) };
                let a = uid("Action", &format!("a{}", rng.below(4)));
                let r = uid("Model", &format!("m{}", rng.below(6)));
                let size = rng.below(100) as i64;
                let ctx = Context::from_pairs([("size".to_owned(), RestrictedExpression::new_long(size))]).unwrap();
                let request = Request::new(p, a, r, ctx, None).unwrap();
                let full = authorizer.is_authorized(&request, &set, &entities);
                let sliced = index.is_authorized(&authorizer, &request, &entities);
                let reasons = |r: &Response| {
                    let mut v: Vec<String> = r.diagnostics().reason().map(ToString::to_string).collect();
                    v.sort();
                    v
                };
                let errors = |r: &Response| {
                    let mut v: Vec<String> = r.diagnostics().errors().map(ToString::to_string).collect();
                    v.sort();
                    v
                };
                assert_eq!(full.decision(), sliced.decision(), "{request}\n{text}");
                assert_eq!(reasons(&full), reasons(&sliced), "{request}");
                assert_eq!(errors(&full), errors(&sliced), "{request}");
                compared += 1;
                allowed += usize::from(full.decision() == cedar_policy::Decision::Allow);
                with_errors += usize::from(full.diagnostics().errors().next().is_some());
            }
        }
        // The corpus exercises both outcomes and errors, not one trivial answer.
        assert_eq!(compared, 2400);
        assert!(allowed > 200 && allowed < 2200, "{allowed}");
        assert!(with_errors > 50, "{with_errors}");
    }
}
