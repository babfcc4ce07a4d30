//! Cedar: the schema, the policies and static entities, loaded and validated once; one decision per request.

use crate::config::{line_containing, line_of};
use crate::error::{ConfigError, Located};
use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

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

/// Schema, policies and entities, validated.
pub struct PolicyStore {
    types: Types,
    /// `ip(...)` values by address: Cedar parses the extension's name for every `new_ip`.
    ips: std::sync::Mutex<HashMap<String, RestrictedExpression>>,
    /// The entities of recent principals (see `request_entities`).
    request_entities: std::sync::Mutex<HashMap<EntitiesKey, std::sync::Arc<Entities>>>,
    index: crate::policy_index::PolicyIndex,
    entities: Entities,
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
        Ok(PolicyStore {
            ips: Default::default(),
            request_entities: Default::default(),
            types: Types::new().map_err(|e| ConfigError::Policies(vec![Located::new("schema", 1, e)]))?,
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
    pub fn authorize(&self, q: &Question) -> Decision {
        match self.decide(q) {
            Ok(d) => d,
            Err(message) => Decision { allowed: false, policy_ids: Vec::new(), errors: vec![message] },
        }
    }

    /// The static entities plus the request's own: the principal (attributes, groups as parents), groups
    /// the entity file does not list, and an unknown model. Cached per principal: building them clones the
    /// static set and recomputes the hierarchy, which cost more than the decision, and callers repeat.
    fn request_entities(
        &self,
        q: &Question,
        principal: &EntityUid,
        resource: &EntityUid,
    ) -> Result<std::sync::Arc<Entities>, String> {
        let unknown_resource = self.entities.get(resource).is_none();
        let key = EntitiesKey::of(q, unknown_resource);
        if let Ok(cache) = self.request_entities.lock()
            && let Some(e) = cache.get(&key)
        {
            return Ok(e.clone());
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
        if unknown_resource {
            extra.push(Entity::with_uid(resource.clone()));
        }
        // The per-request entities are built here to the schema's shape, and the static ones were validated at
        // load, so evaluation skips re-validating them (it costs more than the decision).
        let entities =
            std::sync::Arc::new(self.entities.clone().add_entities(extra, None).map_err(|e| format!("entities: {e}"))?);
        if let Ok(mut cache) = self.request_entities.lock() {
            if cache.len() >= REQUEST_ENTITIES_CACHED {
                cache.clear();
            }
            cache.insert(key, entities.clone());
        }
        Ok(entities)
    }

    fn decide(&self, q: &Question) -> Result<Decision, String> {
        let t = &self.types;
        let principal_type = match q.kind {
            PrincipalKind::User => &t.user,
            PrincipalKind::Service => &t.service,
        };
        let principal = EntityUid::from_type_name_and_id(principal_type.clone(), EntityId::new(&q.principal));
        let action = EntityUid::from_type_name_and_id(t.action.clone(), EntityId::new(&q.action));
        let resource = EntityUid::from_type_name_and_id(t.model.clone(), EntityId::new(&q.resource));

        let entities = self.request_entities(q, &principal, &resource)?;
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
fn restricted(
    v: &serde_json::Value,
    ips: &std::sync::Mutex<HashMap<String, RestrictedExpression>>,
) -> Result<RestrictedExpression, String> {
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
                    let Ok(mut cache) = ips.lock() else { return Ok(RestrictedExpression::new_ip(arg)) };
                    if let Some(e) = cache.get(arg) {
                        return Ok(e.clone());
                    }
                    if cache.len() >= 4096 {
                        cache.clear();
                    }
                    let e = RestrictedExpression::new_ip(arg);
                    cache.insert(arg.to_owned(), e.clone());
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

/// How many principals' entity sets are kept (the cache starts over when full).
const REQUEST_ENTITIES_CACHED: usize = 4096;

/// Everything `request_entities` builds from: the principal's facts, and the model when it must be added.
#[derive(PartialEq, Eq, Hash)]
struct EntitiesKey {
    kind: PrincipalKind,
    principal: String,
    issuer: String,
    email: Option<String>,
    groups: Vec<String>,
    resource: Option<String>,
}

impl EntitiesKey {
    fn of(q: &Question, unknown_resource: bool) -> EntitiesKey {
        EntitiesKey {
            kind: q.kind,
            principal: q.principal.clone(),
            issuer: q.issuer.clone(),
            email: if q.kind == PrincipalKind::User { q.email.clone() } else { None },
            groups: q.groups.clone(),
            resource: unknown_resource.then(|| q.resource.clone()),
        }
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
