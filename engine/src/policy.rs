//! Cedar: the schema, the policies and static entities, loaded and validated once; one decision per request.

use crate::config::{line_containing, line_of};
use crate::error::{ConfigError, Located};
use crate::memo::Memo;
use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

/// The Cedar namespace of Gatehouse's entity types and actions.
pub const NAMESPACE: &str = "Gatehouse";

/// A file's name and text.
#[derive(Debug, Clone)]
pub struct Source {
    /// The name used in messages.
    pub name: String,
    /// The contents.
    pub text: String,
}

/// The outcome of one authorization: it cannot fail; errors ride along.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The policies that determined the decision (empty for a default deny).
    pub policy_ids: Vec<String>,
    /// Evaluation errors (a policy that errs is skipped, so errors never allow).
    pub errors: Vec<String>,
}

/// Whether the principal is a person or a workload.
pub use gatehouse_plugin_abi::PrincipalKind;

/// The facts of one authorization question, in Gatehouse's vocabulary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Question {
    /// Person or workload.
    pub kind: PrincipalKind,
    /// Entity id of the principal (the token's `sub`).
    pub principal: String,
    /// The principal's issuer.
    pub issuer: String,
    /// The principal's e-mail, when the token has one.
    #[serde(default)]
    pub email: Option<String>,
    /// Groups or roles: the principal's parent entities.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The action id.
    pub action: String,
    /// The model (resource) id.
    pub resource: String,
    /// The context record (JSON, shaped by the schema).
    pub context: serde_json::Value,
}

impl Question {
    /// The principal, action and resource, borrowed.
    pub fn ask(&self) -> Ask<'_> {
        Ask {
            kind: self.kind,
            principal: &self.principal,
            issuer: &self.issuer,
            email: self.email.as_deref(),
            groups: &self.groups,
            action: &self.action,
            resource: &self.resource,
        }
    }
}

/// The principal, action and resource of a question, borrowed: with a [`ContextSource`], what the decision
/// cache is keyed by.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Person or workload.
    pub kind: PrincipalKind,
    /// Entity id of the principal.
    pub principal: &'a str,
    /// The principal's issuer.
    pub issuer: &'a str,
    /// The principal's e-mail.
    pub email: Option<&'a str>,
    /// The principal's groups.
    pub groups: &'a [String],
    /// The action id.
    pub action: &'a str,
    /// The model (resource) id.
    pub resource: &'a str,
}

impl Ask<'_> {
    /// The whole question, with `context` as its record.
    pub fn question(&self, context: serde_json::Value) -> Question {
        Question {
            kind: self.kind,
            principal: self.principal.to_owned(),
            issuer: self.issuer.to_owned(),
            email: self.email.map(str::to_owned),
            groups: self.groups.to_vec(),
            action: self.action.to_owned(),
            resource: self.resource.to_owned(),
            context,
        }
    }
}

/// A question's context record, attribute by attribute. A decision the cache holds needs only the attributes
/// the policies read, so a caller that would build the record from its own facts builds only those; the
/// whole record is built when Cedar evaluates. `attribute(name)` must be what `record()` holds at `name`.
pub trait ContextSource {
    /// The attribute `name`, `None` when the record has none.
    fn attribute(&self, name: &str) -> Option<std::borrow::Cow<'_, serde_json::Value>>;
    /// The whole record.
    fn record(&self) -> std::borrow::Cow<'_, serde_json::Value>;
}

impl ContextSource for serde_json::Value {
    fn attribute(&self, name: &str) -> Option<std::borrow::Cow<'_, serde_json::Value>> {
        self.as_object()?.get(name).map(std::borrow::Cow::Borrowed)
    }

    fn record(&self) -> std::borrow::Cow<'_, serde_json::Value> {
        std::borrow::Cow::Borrowed(self)
    }
}

/// Schema, policies and entities, validated.
pub struct PolicyStore {
    types: Types,
    /// `ip(...)` values by address: Cedar parses the extension's name for every `new_ip`.
    ips: Memo<String, RestrictedExpression>,
    /// What of the context the policies read (see `authorize`).
    context_read: ContextRead,
    /// Recent decisions (see `authorize`).
    decisions: Memo<DecisionKey, Arc<Decision>>,
    /// The entities of recent principals (see `request_entities`).
    request_entities: Memo<EntitiesKey, Arc<Entities>>,
    index: crate::policy_index::PolicyIndex,
    entities: Entities,
    /// The ids of the models the static entities list (a model not there is added per request).
    known_models: std::collections::HashSet<String>,
    authorizer: Authorizer,
    origins: BTreeMap<String, Located>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore").field("policies", &self.origins.len()).finish()
    }
}

fn diag_line(diag: &dyn Diagnostic, text: &str) -> usize {
    diag.labels().and_then(|mut labels| labels.next()).map_or(1, |l| line_of(text, l.offset()))
}

fn diag_message(diag: &(dyn Diagnostic + 'static), fallback: String) -> String {
    match diag.help() {
        Some(help) => format!("{fallback} ({help})"),
        None => fallback,
    }
}

impl PolicyStore {
    /// Loads and validates. Every problem is reported with its file and line.
    pub fn load(schema: &Source, policies: &[Source], entities: Option<&Source>) -> Result<Self, ConfigError> {
        let schema_value = match Schema::from_cedarschema_str(&schema.text) {
            Ok((s, _warnings)) => s,
            Err(e) => {
                let line = diag_line(&e, &schema.text);
                return Err(ConfigError::Policies(vec![Located::new(
                    &schema.name,
                    line,
                    diag_message(&e, e.to_string()),
                )]));
            }
        };
        let mut problems = Vec::new();
        let mut set = PolicySet::new();
        let mut origins = BTreeMap::new();
        let mut texts = HashMap::new();
        for file in policies {
            let parsed = match PolicySet::from_str(&file.text) {
                Ok(p) => p,
                Err(errors) => {
                    for e in errors.iter() {
                        problems.push(Located::new(&file.name, diag_line(e, &file.text), e.to_string()));
                    }
                    continue;
                }
            };
            for policy in parsed.policies() {
                let text = policy.to_string();
                let line = line_containing(&file.text, text.lines().next().unwrap_or_default());
                let id = match policy.annotation("id") {
                    Some(id) => id.to_owned(),
                    None => format!("{}:{line}", file.name.rsplit('/').next().unwrap_or(&file.name)),
                };
                if let Some(prev) = origins.get(&id) {
                    problems.push(Located::new(
                        &file.name,
                        line,
                        format!("policy id `{id}` is already used at {prev}"),
                    ));
                    continue;
                }
                let renamed = policy.new_id(PolicyId::new(&id));
                if let Err(e) = set.add(renamed) {
                    problems.push(Located::new(&file.name, line, e.to_string()));
                    continue;
                }
                origins.insert(id.clone(), Located::new(&file.name, line, String::new()));
                texts.insert(id, file.text.clone());
            }
        }
        if set.templates().next().is_some() {
            problems.push(Located::new("policies", 1, "policy templates are not supported yet"));
        }
        let result = Validator::new(schema_value.clone()).validate(&set, ValidationMode::Strict);
        for e in result.validation_errors() {
            let id = e.policy_id().to_string();
            let (file, line) = match (origins.get(&id), texts.get(&id)) {
                (Some(origin), Some(text)) => (origin.file.clone(), diag_line(e, text)),
                _ => ("policies".to_owned(), 1),
            };
            problems.push(Located::new(file, line, format!("policy `{id}`: {e}")));
        }
        // With the schema, Cedar adds the schema's action entities (and their groups) to the store.
        let entities = match entities {
            None => Entities::from_entities([], Some(&schema_value)).unwrap_or_else(|_| Entities::empty()),
            Some(src) => match Entities::from_json_str(&src.text, Some(&schema_value)) {
                Ok(e) => e,
                Err(e) => {
                    let line = diag_line(&e, &src.text);
                    problems.push(Located::new(&src.name, line, diag_message(&e, e.to_string())));
                    Entities::empty()
                }
            },
        };
        if !problems.is_empty() {
            return Err(ConfigError::Policies(problems));
        }
        let types = Types::new().map_err(|e| ConfigError::Policies(vec![Located::new("schema", 1, e)]))?;
        let known_models = entities
            .iter()
            .filter(|e| *e.uid().type_name() == types.model)
            .map(|e| e.uid().id().unescaped().to_owned())
            .collect();
        Ok(PolicyStore {
            known_models,
            ips: Memo::new(IPS_CACHED),
            request_entities: Memo::new(REQUEST_ENTITIES_CACHED),
            context_read: ContextRead::of(&set),
            decisions: Memo::new(DECISIONS_CACHED),
            types,
            index: crate::policy_index::PolicyIndex::new(&set),
            entities,
            authorizer: Authorizer::new(),
            origins,
        })
    }

    /// How many policies are loaded.
    pub fn len(&self) -> usize {
        self.origins.len()
    }

    /// Whether no policy is loaded (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// Where policy `id` was defined.
    pub fn origin(&self, id: &str) -> Option<&Located> {
        self.origins.get(id)
    }

    /// Decides. Never fails: a question that cannot be put to Cedar is denied, with the reason as an error.
    ///
    /// Decisions are remembered by everything they can depend on: the principal's facts, the action, the
    /// model, and the context attributes some policy reads (Cedar is deterministic, and the static entities do
    /// not change while the store lives). A request attribute no policy mentions (`time`, `path` when unused)
    /// does not split the cache.
    pub fn authorize(&self, q: &Question) -> Decision {
        Arc::unwrap_or_clone(self.authorize_lazily(&q.ask(), &q.context, || std::borrow::Cow::Borrowed(q)))
    }

    /// Decides the question `ask` and `context` describe; `question` builds it in full, and is called only
    /// when the decision cache cannot answer. The decision is shared with the cache (a hit copies nothing).
    pub fn authorize_lazily<'q>(
        &self,
        ask: &Ask<'_>,
        context: &dyn ContextSource,
        question: impl FnOnce() -> std::borrow::Cow<'q, Question>,
    ) -> Arc<Decision> {
        let entities = self.entities_ask(ask);
        let Some(context) = self.context_key(context) else {
            return Arc::new(self.decision(&question(), entities.to_key()));
        };
        // Looked up by borrowed parts: a hit copies nothing.
        let asked = DecisionAsk { entities, action: ask.action, resource: ask.resource, context: &context };
        if let Some(d) = self.decisions.get(&asked) {
            return d;
        }
        let entities = entities.to_key();
        let decision = Arc::new(self.decision(&question(), entities.clone()));
        let key = DecisionKey { entities, action: ask.action.to_owned(), resource: ask.resource.to_owned(), context };
        self.decisions.insert(key, Arc::clone(&decision));
        decision
    }

    /// Decides without the decision cache (the reference the cache is tested against).
    pub fn authorize_uncached(&self, q: &Question) -> Decision {
        self.decision(q, self.entities_ask(&q.ask()).to_key())
    }

    fn decision(&self, q: &Question, entities: EntitiesKey) -> Decision {
        match self.decide(q, entities) {
            Ok(d) => d,
            Err(message) => Decision { allowed: false, policy_ids: Vec::new(), errors: vec![message] },
        }
    }

    fn resource_uid(&self, resource: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.types.model.clone(), EntityId::new(resource))
    }

    /// What the request's entities depend on; the model counts only when the static entities lack it.
    fn entities_ask<'a>(&self, ask: &Ask<'a>) -> EntitiesAsk<'a> {
        EntitiesAsk::of(ask, !self.known_models.contains(ask.resource))
    }

    /// The context's part of the decision-cache key: the attributes the policies read, each written as its
    /// JSON name, `:`, its JSON value and `,` (self-delimiting, so distinct contexts never share a key), or the
    /// whole record when a policy uses it whole. `None` when the context is not a record.
    fn context_key(&self, context: &dyn ContextSource) -> Option<String> {
        match &self.context_read {
            ContextRead::Whole => match context.record().as_ref() {
                m @ serde_json::Value::Object(_) => serde_json::to_string(m).ok(),
                _ => None,
            },
            ContextRead::Attributes(names) => {
                let mut out = Vec::with_capacity(64);
                for name in names {
                    if let Some(v) = context.attribute(name) {
                        serde_json::to_writer(&mut out, name).ok()?;
                        out.push(b':');
                        serde_json::to_writer(&mut out, v.as_ref()).ok()?;
                        out.push(b',');
                    }
                }
                String::from_utf8(out).ok()
            }
        }
    }

    /// The static entities plus the request's own: the principal (attributes, groups as parents), groups
    /// the entity file does not list, and an unknown model. Cached per principal: building them clones the
    /// static set and recomputes the hierarchy, which cost more than the decision, and callers repeat.
    fn request_entities(
        &self,
        q: &Question,
        key: EntitiesKey,
        principal: &EntityUid,
        resource: &EntityUid,
    ) -> Result<Arc<Entities>, String> {
        if let Some(e) = self.request_entities.get(&key) {
            return Ok(e);
        }
        let t = &self.types;
        let mut extra = Vec::with_capacity(q.groups.len() + 2);
        let mut parents = HashSet::with_capacity(q.groups.len());
        for g in &q.groups {
            let group = EntityUid::from_type_name_and_id(t.group.clone(), EntityId::new(g));
            if self.entities.get(&group).is_none() {
                extra.push(Entity::with_uid(group.clone()));
            }
            parents.insert(group);
        }
        let mut attrs = HashMap::new();
        attrs.insert("issuer".to_owned(), RestrictedExpression::new_string(q.issuer.clone()));
        if let (PrincipalKind::User, Some(email)) = (q.kind, &q.email) {
            attrs.insert("email".to_owned(), RestrictedExpression::new_string(email.clone()));
        }
        extra.push(Entity::new(principal.clone(), attrs, parents).map_err(|e| format!("principal: {e}"))?);
        if key.resource.is_some() {
            extra.push(Entity::with_uid(resource.clone()));
        }
        // The per-request entities are built here to the schema's shape, and the static ones were validated at
        // load, so evaluation skips re-validating them (it costs more than the decision).
        let entities = Arc::new(self.entities.clone().add_entities(extra, None).map_err(|e| format!("entities: {e}"))?);
        self.request_entities.insert(key, Arc::clone(&entities));
        Ok(entities)
    }

    fn decide(&self, q: &Question, entities: EntitiesKey) -> Result<Decision, String> {
        let t = &self.types;
        let principal_type = match q.kind {
            PrincipalKind::User => &t.user,
            PrincipalKind::Service => &t.service,
        };
        let principal = EntityUid::from_type_name_and_id(principal_type.clone(), EntityId::new(&q.principal));
        let action = EntityUid::from_type_name_and_id(t.action.clone(), EntityId::new(&q.action));
        let resource = self.resource_uid(&q.resource);

        let entities = self.request_entities(q, entities, &principal, &resource)?;
        // Built directly, not through Cedar's JSON reader (which tries untagged variants and builds errors).
        let pairs = match &q.context {
            serde_json::Value::Object(m) => {
                m.iter().map(|(k, v)| Ok((k.clone(), restricted(v, &self.ips)?))).collect::<Result<Vec<_>, String>>()?
            }
            _ => return Err("context: not a record".into()),
        };
        let context = Context::from_pairs(pairs).map_err(|e| format!("context: {e}"))?;
        let request = cedar_policy::Request::new(principal, action, resource, context, None)
            .map_err(|e| format!("request: {e}"))?;
        let response = self.index.is_authorized(&self.authorizer, &request, entities.as_ref());
        let mut policy_ids: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
        policy_ids.sort();
        Ok(Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            policy_ids,
            errors: response.diagnostics().errors().map(ToString::to_string).collect(),
        })
    }
}

/// A context value as a Cedar expression: strings, integers, booleans, sets, records, and the JSON escape
/// `{"__extn": {"fn": "ip", "arg": "..."}}` for IP addresses.
fn restricted(v: &serde_json::Value, ips: &Memo<String, RestrictedExpression>) -> Result<RestrictedExpression, String> {
    use serde_json::Value;
    Ok(match v {
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => {
            RestrictedExpression::new_long(n.as_i64().ok_or_else(|| format!("context: {n} is not a Long"))?)
        }
        Value::Array(a) => {
            RestrictedExpression::new_set(a.iter().map(|v| restricted(v, ips)).collect::<Result<Vec<_>, _>>()?)
        }
        Value::Object(m) => match (m.get("__extn"), m.len()) {
            (Some(e), 1) => match (e.get("fn").and_then(Value::as_str), e.get("arg").and_then(Value::as_str)) {
                (Some("ip"), Some(arg)) => {
                    if let Some(e) = ips.get(arg) {
                        return Ok(e);
                    }
                    let e = RestrictedExpression::new_ip(arg);
                    ips.insert(arg.to_owned(), e.clone());
                    e
                }
                (Some("decimal"), Some(arg)) => RestrictedExpression::new_decimal(arg),
                _ => return Err("context: unsupported extension value".into()),
            },
            _ => RestrictedExpression::new_record(
                m.iter().map(|(k, v)| Ok((k.clone(), restricted(v, ips)?))).collect::<Result<Vec<_>, String>>()?,
            )
            .map_err(|e| format!("context: {e}"))?,
        },
        Value::Null => return Err("context: null has no Cedar value".into()),
    })
}

/// How many `ip(...)` values are kept.
const IPS_CACHED: usize = 4096;

/// How many principals' entity sets are kept (see [`Memo`] for what goes when full).
const REQUEST_ENTITIES_CACHED: usize = 4096;

/// Everything `request_entities` builds from: the principal's facts, and the model when it must be added.
#[derive(Clone, PartialEq, Eq, Hash)]
struct EntitiesKey {
    kind: PrincipalKind,
    principal: String,
    issuer: String,
    email: Option<String>,
    groups: Vec<String>,
    resource: Option<String>,
}

/// An [`EntitiesKey`] of borrowed parts, to look one up without copying. It must hash exactly as the owned
/// key does: the same fields in the same order, and a `&str` hashes as a `String`, a slice as a `Vec`, an
/// `Option<&str>` as an `Option<String>` (tested below).
#[derive(Clone, Copy, Hash)]
struct EntitiesAsk<'a> {
    kind: PrincipalKind,
    principal: &'a str,
    issuer: &'a str,
    email: Option<&'a str>,
    groups: &'a [String],
    resource: Option<&'a str>,
}

impl<'a> EntitiesAsk<'a> {
    fn of(q: &Ask<'a>, unknown_resource: bool) -> EntitiesAsk<'a> {
        EntitiesAsk {
            kind: q.kind,
            principal: q.principal,
            issuer: q.issuer,
            email: if q.kind == PrincipalKind::User { q.email } else { None },
            groups: q.groups,
            resource: unknown_resource.then_some(q.resource),
        }
    }

    fn to_key(self) -> EntitiesKey {
        EntitiesKey {
            kind: self.kind,
            principal: self.principal.to_owned(),
            issuer: self.issuer.to_owned(),
            email: self.email.map(str::to_owned),
            groups: self.groups.to_vec(),
            resource: self.resource.map(str::to_owned),
        }
    }
}

impl hashbrown::Equivalent<EntitiesKey> for EntitiesAsk<'_> {
    fn equivalent(&self, key: &EntitiesKey) -> bool {
        self.kind == key.kind
            && self.principal == key.principal
            && self.issuer == key.issuer
            && self.email == key.email.as_deref()
            && self.groups == key.groups.as_slice()
            && self.resource == key.resource.as_deref()
    }
}

/// How many decisions are kept (see [`Memo`] for what goes when full).
const DECISIONS_CACHED: usize = 16_384;

/// Everything a decision depends on besides the store itself.
#[derive(PartialEq, Eq, Hash)]
struct DecisionKey {
    entities: EntitiesKey,
    action: String,
    resource: String,
    /// The context attributes the policies read, as JSON.
    context: String,
}

/// A [`DecisionKey`] of borrowed parts, hashing as it does (see [`EntitiesAsk`]).
#[derive(Hash)]
struct DecisionAsk<'a> {
    entities: EntitiesAsk<'a>,
    action: &'a str,
    resource: &'a str,
    context: &'a str,
}

impl hashbrown::Equivalent<DecisionKey> for DecisionAsk<'_> {
    fn equivalent(&self, key: &DecisionKey) -> bool {
        self.entities.equivalent(&key.entities)
            && self.action == key.action
            && self.resource == key.resource
            && self.context == key.context
    }
}

/// The context attributes the policies read: every `context.NAME` / `context has NAME`, or the whole record
/// when a policy uses `context` any other way.
enum ContextRead {
    Whole,
    Attributes(std::collections::BTreeSet<String>),
}

impl ContextRead {
    fn of(set: &PolicySet) -> ContextRead {
        let mut names = std::collections::BTreeSet::new();
        for p in set.policies() {
            let Ok(est) = p.to_json() else { return ContextRead::Whole };
            if !context_attributes(&est, &mut names) {
                return ContextRead::Whole;
            }
        }
        ContextRead::Attributes(names)
    }
}

/// Collects the attributes read from `context` in a policy's JSON form; false when `context` is used other
/// than through `.` or `has` (then the whole context matters). Every use of the variable is `{"Var":
/// "context"}`, so a use this misses makes it answer false, never a smaller set.
fn context_attributes(v: &serde_json::Value, names: &mut std::collections::BTreeSet<String>) -> bool {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            if m.get("Var").and_then(Value::as_str) == Some("context") {
                return false;
            }
            m.iter().all(|(op, inner)| {
                let attr = inner.get("attr").and_then(Value::as_str);
                let on_context =
                    inner.get("left").and_then(|l| l.get("Var")).and_then(Value::as_str) == Some("context");
                match (op.as_str(), attr, on_context) {
                    ("." | "has", Some(attr), true) if inner.as_object().is_some_and(|o| o.len() == 2) => {
                        names.insert(attr.to_owned());
                        true
                    }
                    _ => context_attributes(inner, names),
                }
            })
        }
        Value::Array(a) => a.iter().all(|x| context_attributes(x, names)),
        _ => true,
    }
}

/// The entity type names of requests, parsed once (parsing a name runs Cedar's parser).
struct Types {
    user: EntityTypeName,
    service: EntityTypeName,
    group: EntityTypeName,
    action: EntityTypeName,
    model: EntityTypeName,
}

impl Types {
    fn new() -> Result<Types, String> {
        let t = |name: &str| EntityTypeName::from_str(&format!("{NAMESPACE}::{name}")).map_err(|e| e.to_string());
        Ok(Types {
            user: t("User")?,
            service: t("Service")?,
            group: t("Group")?,
            action: t("Action")?,
            model: t("Model")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str =
        "namespace Gatehouse { entity Group; entity User in [Group] = { issuer: String, email?: String };
        entity Service in [Group] = { issuer: String }; entity Model;
        action predict appliesTo { principal: [User, Service], resource: Model, context: {} }; }";
    const POLICIES: &str = r#"
        @id("group") permit(principal in Gatehouse::Group::"g", action, resource);
        @id("email") permit(principal is Gatehouse::User, action, resource)
            when { principal has email && principal.email == "a@example.com" };
        @id("issuer") permit(principal, action, resource) when { principal.issuer == "https://trusted" };
    "#;

    fn ask(store: &PolicyStore, groups: &[&str], email: Option<&str>, issuer: &str) -> Vec<String> {
        let q = Question {
            kind: PrincipalKind::User,
            principal: "alice".into(),
            issuer: issuer.into(),
            email: email.map(Into::into),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            action: "predict".into(),
            resource: "m".into(),
            context: serde_json::json!({}),
        };
        let d = store.authorize(&q);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        d.policy_ids
    }

    /// The decision cache is looked up with keys of borrowed parts: each must hash as the owned key it stands
    /// for (or every lookup would miss, silently) and be equivalent to that key only.
    #[test]
    fn borrowed_cache_keys_hash_and_compare_as_the_owned_ones() {
        use hashbrown::Equivalent;
        use std::hash::BuildHasher;
        let state = foldhash::fast::RandomState::default();
        let groups = ["g1".to_owned(), "g2".to_owned()];
        let mut asks = Vec::new();
        for kind in [PrincipalKind::User, PrincipalKind::Service] {
            for email in [None, Some("a@example.com")] {
                for groups in [&groups[..0], &groups[..1], &groups[..]] {
                    for resource in [None, Some("m")] {
                        let entities = EntitiesAsk { kind, principal: "p", issuer: "i", email, groups, resource };
                        for context in ["", r#""ip":"1.2.3.4","#] {
                            asks.push(DecisionAsk { entities, action: "predict", resource: "m", context });
                        }
                    }
                }
            }
        }
        let keys: Vec<DecisionKey> = asks
            .iter()
            .map(|a| DecisionKey {
                entities: a.entities.to_key(),
                action: a.action.to_owned(),
                resource: a.resource.to_owned(),
                context: a.context.to_owned(),
            })
            .collect();
        for (i, ask) in asks.iter().enumerate() {
            assert_eq!(state.hash_one(ask), state.hash_one(&keys[i]), "ask {i}");
            assert_eq!(state.hash_one(ask.entities), state.hash_one(&keys[i].entities), "ask {i}");
            for (j, key) in keys.iter().enumerate() {
                assert_eq!(ask.equivalent(key), i == j, "ask {i} against key {j}");
            }
        }
    }

    /// The same principal asks again with other groups, e-mail or issuer: the cached entities of the first
    /// question must not answer the second.
    #[test]
    fn cached_principal_entities_follow_the_token() {
        let src = |name: &str, text: &str| Source { name: name.into(), text: text.into() };
        let store = PolicyStore::load(&src("s", SCHEMA), &[src("p", POLICIES)], None).unwrap();
        for _ in 0..2 {
            assert_eq!(ask(&store, &["g"], None, "https://x"), ["group"]);
            assert!(ask(&store, &[], None, "https://x").is_empty());
            assert_eq!(ask(&store, &["h"], Some("a@example.com"), "https://x"), ["email"]);
            assert!(ask(&store, &["h"], Some("b@example.com"), "https://x").is_empty());
            assert_eq!(ask(&store, &["h"], None, "https://trusted"), ["issuer"]);
        }
    }
}

#[cfg(test)]
mod decision_cache_tests {
    //! The decision cache answers exactly what evaluation answers: a differential test over the example
    //! policies plus policies that read time, path and the client address, on generated questions asked
    //! repeatedly; and the static analysis of what the policies read from the context.
    use super::*;

    fn read(text: &str) -> Option<Vec<String>> {
        match ContextRead::of(&PolicySet::from_str(text).unwrap()) {
            ContextRead::Whole => None,
            ContextRead::Attributes(names) => Some(names.into_iter().collect()),
        }
    }

    #[test]
    fn what_the_policies_read_from_the_context() {
        assert_eq!(read("permit(principal, action, resource);"), Some(vec![]));
        assert_eq!(
            read(
                r#"permit(principal, action, resource) when { context.a > 1 && context has b && context["c"] == 2 };
                   forbid(principal, action, resource) unless { context.d.e == "x" };"#
            ),
            Some(vec!["a".into(), "b".into(), "c".into(), "d".into()])
        );
        assert_eq!(read("permit(principal, action, resource) when { context == {} };"), None);
        assert_eq!(read("permit(principal, action, resource) when { [context].contains({}) };"), None);
        assert_eq!(
            read(r#"permit(principal, action, resource) when { context has "a" && context.a == context };"#),
            None
        );
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn cached_decisions_equal_evaluated_ones() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
        let src = |f: &str| Source { name: f.into(), text: std::fs::read_to_string(format!("{dir}/{f}")).unwrap() };
        let extra = Source {
            name: "extra.cedar".into(),
            text: r#"
                @id("office-hours") permit(principal in Gatehouse::Group::"night-shift", action, resource)
                    when { context.time > 1800000001 };
                @id("no-admin-path") forbid(principal, action, resource) when { context.path like "/admin/*" };
                @id("lan-only") forbid(principal in Gatehouse::Group::"contractors", action, resource)
                    unless { context.client_ip.isInRange(ip("10.0.0.0/8")) };
            "#
            .into(),
        };
        let store =
            PolicyStore::load(&src("schema.cedarschema"), &[src("models.cedar"), extra], Some(&src("entities.json")))
                .unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let pick = |rng: &mut Rng, xs: &[&str]| xs[rng.below(xs.len() as u64) as usize].to_owned();
        let (mut allowed, mut denied) = (0, 0);
        for _ in 0..3_000 {
            let groups = ["data-scientists", "data-scientists", "night-shift", "contractors", "nobody"];
            let n = 1 + rng.below(2);
            let payload_size = [10i64, 300_000][rng.below(2) as usize];
            let max_tokens = [10i64, 5000][rng.below(2) as usize];
            let q = Question {
                kind: if rng.below(4) == 0 { PrincipalKind::Service } else { PrincipalKind::User },
                principal: format!("p{}", rng.below(5)),
                issuer: pick(&mut rng, &["https://a", "https://b"]),
                email: (rng.below(2) == 0).then(|| "a@example.com".to_owned()),
                groups: (0..n).map(|_| pick(&mut rng, &groups)).collect(),
                action: pick(&mut rng, &["predict", "predict", "explain", "generate"]),
                resource: pick(&mut rng, &["demo", "demo", "fraud-scorer", "gemini", "assistant", "unknown"]),
                context: serde_json::json!({
                    "method": "POST",
                    "path": pick(&mut rng, &["/v1/models/demo:predict", "/admin/x"]),
                    "route": "predict",
                    "client_ip": {"__extn": {"fn": "ip", "arg": pick(&mut rng, &["10.1.2.3", "192.168.0.1"])}},
                    "time": 1_800_000_000i64 + rng.below(4) as i64,
                    "scopes": if rng.below(2) == 0 { vec!["predict"] } else { vec![] },
                    "issuer": "https://a",
                    "payload_size": payload_size,
                    "inference": if rng.below(2) == 0 { serde_json::json!({}) }
                                 else { serde_json::json!({"max_tokens": max_tokens}) },
                }),
            };
            let (cached, evaluated) = (store.authorize(&q), store.authorize_uncached(&q));
            assert_eq!(cached, evaluated, "{q:?}");
            if evaluated.allowed { allowed += 1 } else { denied += 1 }
        }
        assert!(allowed > 200 && denied > 300, "{allowed} allowed, {denied} denied");
    }
}
