//! Rego policies on routes, evaluated in-process with regorus.
//!
//! A policy is compiled once per configuration load: parsed, checked, and compiled to
//! regorus's bytecode (its RVM) for the route's query. A request is then one run of that
//! program over an input built straight from the facts document as regorus values, on a
//! virtual machine that each worker thread keeps for the policy, so no evaluation waits for
//! another. Every run is bounded by an instruction budget and a wall-clock deadline; a run
//! over either, an error, an undefined result or an answer that is not one Vigil understands
//! is a denial with the reason.
//!
//! Policies the bytecode compiler cannot take yet are evaluated by regorus's interpreter,
//! under the same deadline. The interpreter also explains a run that ended undefined (it
//! reports runtime errors, with file, line and column, where the bytecode only stops), and it
//! runs the `test_*` rules of `vigil policy test`, whose `with` overrides only it supports.

use super::facts::{Facts, Headers};
use crate::posture::inventory::{Inventory, Key};
use regorus::rvm::{Program, RegoVM};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{CompiledPolicy, Engine, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much one evaluation may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytecode instructions per evaluation.
    pub max_instructions: usize,
    /// Wall-clock time per evaluation.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_instructions: 100_000,
            timeout: Duration::from_millis(5),
        }
    }
}

impl Limits {
    fn timer(&self) -> ExecutionTimerConfig {
        ExecutionTimerConfig {
            limit: self.timeout,
            // A clock read every 32 units of work: cheap, and never far past the deadline.
            check_interval: NonZeroU32::new(32).expect("non-zero"),
        }
    }
}

/// The data documents a configuration loads (`[policy] data`), merged under `data`.
pub type Data = Value;

/// What a policy file gives to be compiled.
pub struct Source {
    /// As the configuration names it; also the name in errors, logs and metrics.
    pub name: String,
    pub text: String,
}

/// One route's policy, compiled.
pub struct Rego {
    /// Tells this compilation apart from every other in the process (the workers' machines
    /// are kept by it).
    id: u64,
    /// The policy file, as the configuration names it; shared by every decision and metric
    /// that names it.
    pub label: Arc<str>,
    /// The rule whose value decides, like `data.zero_trust.api.allow`.
    pub query: String,
    /// `None` when the bytecode compiler cannot take the policy: the interpreter runs it.
    program: Option<Arc<Program>>,
    /// The interpreter's form: runs what the bytecode cannot, and explains what it could not.
    compiled: CompiledPolicy,
    data: Data,
    /// The device inventory, offered to the policy as `data.vigil.devices`.
    inventory: Option<Arc<Inventory>>,
    /// How the inventory identifies a device, for `input.device_id`.
    device_key: Option<Key>,
    limits: Limits,
    /// The inventory's documents as the policy last saw them, by inventory version.
    devices: arc_swap::ArcSwap<(u64, Value)>,
}

impl std::fmt::Debug for Rego {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rego")
            .field("label", &self.label)
            .field("query", &self.query)
            .field("bytecode", &self.program.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a policy does not compile: where, what, and the line that says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// `file:line:col: what`, or `file: what` when regorus names no place.
    pub message: String,
    /// The offending line with a caret under the place, when there is one.
    pub snippet: Option<String>,
}

/// What a policy answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The policy allows; `reasons` are its own, `headers` go upstream.
    Allow {
        reasons: Vec<String>,
        read_only: bool,
        headers: Vec<(String, String)>,
    },
    /// The policy denies, with its reasons.
    Deny { reasons: Vec<String> },
    /// No decision: the result was undefined, not a decision, or the evaluation failed or ran
    /// over its budget. Always a denial.
    Failed { kind: Failure, error: String },
}

/// How an evaluation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The query's value is undefined (no rule gave it a value, and there is no default).
    Undefined,
    /// The value is neither a boolean nor an object with a boolean `allow`.
    Malformed,
    /// A runtime error (a builtin's, a conflict between rule values...).
    Error,
    /// Over the instruction budget or the deadline.
    Budget,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Undefined => "undefined",
            Failure::Malformed => "malformed",
            Failure::Error => "error",
            Failure::Budget => "budget",
        }
    }
}

/// One evaluation: the answer and the time it took.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub answer: Answer,
    pub elapsed: Duration,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What a compilation needs besides the policy file.
pub struct Setting<'a> {
    /// `policy_query`, when the route gives one.
    pub query: Option<&'a str>,
    pub data: &'a Data,
    pub inventory: Option<Arc<Inventory>>,
    pub limits: Limits,
}

impl Rego {
    /// Compiles `source` for its query (`data.<package>.allow` unless the setting names one).
    pub fn compile(source: &Source, setting: Setting<'_>) -> Result<Self, CompileError> {
        let mut engine = engine(setting.limits);
        let package = engine
            .add_policy(source.name.clone(), source.text.clone())
            .map_err(|e| compile_error(&source.name, &e))?;
        engine
            .add_data(setting.data.clone())
            .map_err(|e| compile_error(&source.name, &e))?;
        let query = match setting.query {
            Some(q) => q.to_owned(),
            None => format!("{package}.allow"),
        };
        if !query.starts_with("data.") {
            return Err(CompileError {
                message: format!("policy_query {query:?} must be a rule path under data."),
                snippet: None,
            });
        }
        let compiled = engine
            .compile_with_entrypoint(&query.as_str().into())
            .map_err(|e| {
                if e.to_string().contains("not a valid rule path") {
                    CompileError {
                        message: format!(
                            "{}: policy_query {query:?} names no rule of the policy",
                            source.name
                        ),
                        snippet: None,
                    }
                } else {
                    compile_error(&source.name, &e)
                }
            })?;
        let program =
            regorus::languages::rego::compiler::Compiler::compile_from_policy(&compiled, &[&query])
                .ok();
        let inventory = setting.inventory;
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            label: Arc::from(source.name.as_str()),
            query,
            program,
            compiled,
            data: setting.data.clone(),
            device_key: inventory.as_ref().map(|i| i.settings.key),
            inventory,
            limits: setting.limits,
            devices: arc_swap::ArcSwap::from_pointee((u64::MAX, Value::Undefined)),
        })
    }

    /// True when the policy runs as bytecode (else on the interpreter, which is slower).
    pub fn is_bytecode(&self) -> bool {
        self.program.is_some()
    }

    /// Evaluates the policy over `facts`. Never fails: what is not an allow is a denial.
    pub fn evaluate(&self, facts: &Facts<'_>) -> Evaluation {
        let started = Instant::now();
        let input = self.input(facts);
        let answer = match &self.program {
            Some(program) => self.run(program, input),
            None => self.interpret(input),
        };
        Evaluation {
            answer,
            elapsed: started.elapsed(),
        }
    }

    /// A run of the bytecode on this thread's machine for the policy.
    fn run(&self, program: &Arc<Program>, input: Value) -> Answer {
        let version = self.inventory.as_ref().map_or(0, |i| i.version());
        let result = MACHINES.with(|machines| {
            let mut machines = machines.borrow_mut();
            let machine = remembered(
                &mut machines,
                MACHINES_PER_THREAD,
                |m| m.policy == self.id,
                || Machine::new(self.id, program, self.limits),
            );
            if machine.data_version != Some(version) {
                machine
                    .vm
                    .set_data(self.data_with_devices(version))
                    .map_err(|e| e.to_string())?;
                machine.data_version = Some(version);
            }
            machine.vm.set_input(input.clone());
            machine.vm.execute().map_err(|e| e.to_string())
        });
        match result {
            Ok(Value::Undefined) => self.explain_undefined(input),
            Ok(value) => answer(&value),
            Err(e) => failed(&e),
        }
    }

    /// A run on the interpreter.
    fn interpret(&self, input: Value) -> Answer {
        match self.compiled.eval_with_input(input) {
            Ok(Value::Undefined) => Answer::Failed {
                kind: Failure::Undefined,
                error: format!("{} is undefined", self.query),
            },
            Ok(value) => answer(&value),
            Err(e) => failed(&e.to_string()),
        }
    }

    /// The bytecode stops at a runtime error with an undefined result; the interpreter says
    /// what the error was. The answer is a denial either way.
    fn explain_undefined(&self, input: Value) -> Answer {
        match self.interpret(input) {
            failed @ Answer::Failed { .. } => failed,
            _ => Answer::Failed {
                kind: Failure::Undefined,
                error: format!("{} is undefined", self.query),
            },
        }
    }

    /// The configured data, with the inventory's devices under `vigil.devices`.
    fn data_with_devices(&self, version: u64) -> Value {
        let Some(inventory) = &self.inventory else {
            return self.data.clone();
        };
        let cached = self.devices.load();
        let devices = if cached.0 == version {
            cached.1.clone()
        } else {
            let devices = devices_value(inventory);
            self.devices.store(Arc::new((version, devices.clone())));
            devices
        };
        let mut data = self.data.clone();
        if let Ok(map) = data.as_object_mut() {
            let mut vigil = BTreeMap::new();
            vigil.insert(Value::from("devices"), devices);
            map.insert(Value::from("vigil"), Value::from(vigil));
        }
        data
    }

    /// The input document: the facts as `docs/policy.md` describes them.
    pub fn input(&self, facts: &Facts<'_>) -> Value {
        input(facts, self.device_key)
    }
}

/// Machines kept per worker thread; past it the oldest goes (reloads leave old ones behind).
const MACHINES_PER_THREAD: usize = 16;

struct Machine {
    policy: u64,
    data_version: Option<u64>,
    vm: RegoVM,
}

impl Machine {
    fn new(policy: u64, program: &Arc<Program>, limits: Limits) -> Self {
        let mut vm = RegoVM::new();
        vm.load_program(program.clone());
        vm.set_max_instructions(limits.max_instructions);
        vm.set_execution_timer_config(Some(limits.timer()));
        Self {
            policy,
            data_version: None,
            vm,
        }
    }
}

thread_local! {
    static MACHINES: RefCell<Vec<Machine>> = const { RefCell::new(Vec::new()) };
}

/// The entry of a thread's small cache that `same` finds, or a new one `make` makes, the
/// oldest dropped once `limit` are kept.
fn remembered<T>(
    entries: &mut Vec<T>,
    limit: usize,
    same: impl Fn(&T) -> bool,
    make: impl FnOnce() -> T,
) -> &mut T {
    let at = match entries.iter().position(same) {
        Some(at) => at,
        None => {
            if entries.len() >= limit {
                entries.remove(0);
            }
            entries.push(make());
            entries.len() - 1
        }
    };
    &mut entries[at]
}

/// An engine as every policy is compiled in: Rego v1, errors from builtins reported, and the
/// deadline.
pub fn engine(limits: Limits) -> Engine {
    let mut engine = Engine::new();
    engine.set_rego_v0(false);
    engine.set_strict_builtin_errors(true);
    engine.set_execution_timer_config(limits.timer());
    engine
}

/// A failed run, told apart by what regorus said.
fn failed(error: &str) -> Answer {
    let kind = if error.contains("instruction limit") || error.contains("time limit") {
        Failure::Budget
    } else {
        Failure::Error
    };
    Answer::Failed {
        kind,
        error: one_line(error),
    }
}

/// What a policy's value means: `true`/`false`, or an object with a boolean `allow` and
/// optionally `reasons`, `read_only` and `headers`.
fn answer(value: &Value) -> Answer {
    match value {
        Value::Bool(true) => Answer::Allow {
            reasons: Vec::new(),
            read_only: false,
            headers: Vec::new(),
        },
        Value::Bool(false) => Answer::Deny {
            reasons: Vec::new(),
        },
        Value::Object(fields) => match object_answer(fields) {
            Ok(answer) => answer,
            Err(error) => Answer::Failed {
                kind: Failure::Malformed,
                error,
            },
        },
        other => Answer::Failed {
            kind: Failure::Malformed,
            error: format!(
                "the policy answered {}, not a boolean or an object with allow",
                kind_of(other)
            ),
        },
    }
}

fn object_answer(fields: &regorus::value::Object) -> Result<Answer, String> {
    for key in fields.keys() {
        match key {
            Value::String(k) if ["allow", "reasons", "read_only", "headers"].contains(&&**k) => {}
            other => {
                return Err(format!(
                    "the policy's answer has an unknown field {other}: allow, reasons, read_only and headers are known"
                ));
            }
        }
    }
    let allow = match fields.get(&Value::from("allow")) {
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("allow is {}, not a boolean", kind_of(other))),
        None => return Err("the policy's answer has no allow".into()),
    };
    let reasons = match fields.get(&Value::from("reasons")) {
        None => Vec::new(),
        Some(Value::Array(items)) => strings(items.iter(), "reasons")?,
        Some(Value::Set(items)) => strings(items.iter(), "reasons")?,
        Some(other) => return Err(format!("reasons is {}, not a list", kind_of(other))),
    };
    if !allow {
        return Ok(Answer::Deny { reasons });
    }
    let read_only = match fields.get(&Value::from("read_only")) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("read_only is {}, not a boolean", kind_of(other))),
    };
    let headers = match fields.get(&Value::from("headers")) {
        None => Vec::new(),
        Some(Value::Object(map)) => upstream_headers(map)?,
        Some(other) => return Err(format!("headers is {}, not an object", kind_of(other))),
    };
    Ok(Answer::Allow {
        reasons,
        read_only,
        headers,
    })
}

/// Reasons are short texts for a log line and a page.
const MAX_REASON: usize = 200;
const MAX_REASONS: usize = 16;

fn strings<'a>(items: impl Iterator<Item = &'a Value>, what: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in items {
        let Value::String(s) = item else {
            return Err(format!("{what} holds {}, not a string", kind_of(item)));
        };
        if out.len() == MAX_REASONS {
            break;
        }
        let text: String = s
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_REASON)
            .collect();
        out.push(text);
    }
    Ok(out)
}

/// Headers a policy adds upstream: valid names and values, never one Vigil sets or strips
/// itself, nor a hop-by-hop one.
fn upstream_headers(map: &regorus::value::Object) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map.iter() {
        let (Value::String(name), Value::String(value)) = (name, value) else {
            return Err("headers must map names to strings".into());
        };
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(format!("headers: {name:?} is not a header name"));
        }
        if reserved_header(&lower) {
            return Err(format!(
                "headers: {name:?} is one Vigil sets or removes itself"
            ));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(format!(
                "headers: the value of {name:?} is not a header value"
            ));
        }
        out.push((lower, value.to_string()));
    }
    Ok(out)
}

/// Header names a policy may not add upstream.
pub fn reserved_header(lower: &str) -> bool {
    lower.starts_with("x-vigil-")
        || lower.starts_with("x-forwarded-")
        || matches!(
            lower,
            "forwarded"
                | "host"
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "content-length"
                | "x-request-id"
                | "authorization"
                | "cookie"
        )
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        Value::Undefined => "undefined",
    }
}

/// regorus's multi-line error (`--> file:line:col`, the line, a caret, `error: what`) as
/// `file:line:col: what`.
fn one_line(error: &str) -> String {
    let (place, what, _) = parts(error);
    match place {
        Some(place) => format!("{place}: {what}"),
        None => what,
    }
}

fn parts(error: &str) -> (Option<String>, String, Option<String>) {
    let mut place = None;
    let mut what = Vec::new();
    let mut snippet = Vec::new();
    for line in error.lines() {
        if let Some(p) = line.trim().strip_prefix("--> ") {
            place = Some(p.to_owned());
        } else if let Some(w) = line.trim().strip_prefix("error: ") {
            what.push(w.to_owned());
        } else if place.is_some() && what.is_empty() && !line.trim().is_empty() {
            snippet.push(line.to_owned());
        } else if place.is_none() && !line.trim().is_empty() {
            what.push(line.trim().to_owned());
        }
    }
    let snippet = (!snippet.is_empty()).then(|| snippet.join("\n"));
    (place, what.join("; "), snippet)
}

fn compile_error(name: &str, error: &anyhow::Error) -> CompileError {
    let text = format!("{error:#}");
    let (place, what, snippet) = parts(&text);
    CompileError {
        message: match place {
            Some(place) => format!("{place}: {what}"),
            None => format!("{name}: {what}"),
        },
        snippet,
    }
}

/// A data document's text as a value: JSON, and an object (it is merged under `data`).
pub fn data_document(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(Value::from(v)),
        Ok(_) => Err("a data document must be an object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Merges `value` into `into`: objects key by key, anything else defined once.
pub fn merge(into: &mut Value, value: Value, at: &str) -> Result<(), String> {
    let (Value::Object(_), Value::Object(new)) = (&*into, &value) else {
        return Err(format!("{at} is defined twice"));
    };
    let map = into.as_object_mut().map_err(|e| e.to_string())?;
    for (k, v) in new.iter() {
        let name = match k {
            Value::String(s) => format!("{at}.{s}"),
            other => format!("{at}.{other}"),
        };
        match map.get_mut(k) {
            Some(existing) => merge(existing, v.clone(), &name)?,
            None => {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

/// regorus's error as one line: `file:line:col: what`.
pub fn error_text(error: &anyhow::Error) -> String {
    one_line(&format!("{error:#}"))
}

/// Builds regorus objects without repeating the key conversions.
struct Builder(BTreeMap<Value, Value>);

impl Builder {
    fn new() -> Self {
        Self(BTreeMap::new())
    }

    fn set(&mut self, key: &Value, value: impl Into<Value>) -> &mut Self {
        self.0.insert(key.clone(), value.into());
        self
    }

    /// A key that is not one of the input's own names (a claim's).
    fn set_named(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.0.insert(Value::from(key), value.into());
        self
    }

    fn opt(&mut self, key: &Value, value: Option<&str>) -> &mut Self {
        self.set(key, value.map_or(Value::Null, Value::from))
    }

    fn done(&mut self) -> Value {
        Value::from(std::mem::take(&mut self.0))
    }
}

/// The input's field names, made once: a key is then a reference count, not an allocation.
struct Keys {
    acr: Value,
    amr: Value,
    auth_time: Value,
    certificate: Value,
    claims: Value,
    common_name: Value,
    compliant: Value,
    country: Value,
    device: Value,
    device_id: Value,
    dns: Value,
    email: Value,
    emails: Value,
    fingerprint: Value,
    groups: Value,
    headers: Value,
    host: Value,
    issuer: Value,
    jwt: Value,
    last_check_in: Value,
    level: Value,
    managed: Value,
    method: Value,
    mfa: Value,
    name: Value,
    network: Value,
    not_after: Value,
    not_before: Value,
    owner: Value,
    parsed_path: Value,
    path: Value,
    person: Value,
    request: Value,
    route: Value,
    score: Value,
    serial: Value,
    signals: Value,
    source: Value,
    source_address: Value,
    spiffe_id: Value,
    sub: Value,
    subject: Value,
    time: Value,
    time_ns: Value,
    uris: Value,
    verified_at: Value,
    version: Value,
    risk: Value,
    os: Value,
    grants: Value,
    block: Value,
    shared_state: Value,
    synced: Value,
    age: Value,
    stale: Value,
}

static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();

fn keys() -> &'static Keys {
    KEYS.get_or_init(|| Keys {
        acr: Value::from("acr"),
        amr: Value::from("amr"),
        auth_time: Value::from("auth_time"),
        certificate: Value::from("certificate"),
        claims: Value::from("claims"),
        common_name: Value::from("common_name"),
        compliant: Value::from("compliant"),
        country: Value::from("country"),
        device: Value::from("device"),
        device_id: Value::from("device_id"),
        dns: Value::from("dns"),
        email: Value::from("email"),
        emails: Value::from("emails"),
        fingerprint: Value::from("fingerprint"),
        groups: Value::from("groups"),
        headers: Value::from("headers"),
        host: Value::from("host"),
        issuer: Value::from("issuer"),
        jwt: Value::from("jwt"),
        last_check_in: Value::from("last_check_in"),
        level: Value::from("level"),
        managed: Value::from("managed"),
        method: Value::from("method"),
        mfa: Value::from("mfa"),
        name: Value::from("name"),
        network: Value::from("network"),
        not_after: Value::from("not_after"),
        not_before: Value::from("not_before"),
        owner: Value::from("owner"),
        parsed_path: Value::from("parsed_path"),
        path: Value::from("path"),
        person: Value::from("person"),
        request: Value::from("request"),
        route: Value::from("route"),
        score: Value::from("score"),
        serial: Value::from("serial"),
        signals: Value::from("signals"),
        source: Value::from("source"),
        source_address: Value::from("source_address"),
        spiffe_id: Value::from("spiffe_id"),
        sub: Value::from("sub"),
        subject: Value::from("subject"),
        time: Value::from("time"),
        time_ns: Value::from("time_ns"),
        uris: Value::from("uris"),
        verified_at: Value::from("verified_at"),
        version: Value::from("version"),
        risk: Value::from("risk"),
        os: Value::from("os"),
        grants: Value::from("grants"),
        block: Value::from("block"),
        shared_state: Value::from("shared_state"),
        synced: Value::from("synced"),
        age: Value::from("age"),
        stale: Value::from("stale"),
    })
}

fn strs<'a>(items: impl IntoIterator<Item = &'a String>) -> Value {
    Value::from(
        items
            .into_iter()
            .map(|s| Value::from(s.as_str()))
            .collect::<Vec<_>>(),
    )
}

/// The input document of a decision: the facts, field for field as the facts document
/// writes them, and beside them the names OPA policies use (`jwt`, `device_id`, `spiffe_id`,
/// `method`, `path`, `parsed_path`, `host`, `headers`, `source_address`, `time_ns`).
pub fn input(facts: &Facts<'_>, device_key: Option<Key>) -> Value {
    let k = keys();
    let cert = facts.certificate;
    let (certificate, device_id) = certificate_parts(cert, device_key);
    let source = Value::from(facts.network.source.to_string());
    let (person, jwt) = facts
        .person
        .map_or((Value::Null, Value::Null), person_parts);
    let request = &facts.request;
    let headers = headers_value(&request.headers);
    let mut req = Builder::new();
    req.opt(&k.route, request.route)
        .set(&k.host, request.host)
        .set(&k.method, request.method)
        .set(&k.path, request.path)
        .set(&k.headers, headers.clone());
    let mut input = Builder::new();
    input
        .set(&k.time, facts.time)
        .set(&k.time_ns, i128::from(facts.time) * 1_000_000_000)
        .set(&k.request, req.done())
        .set(&k.certificate, certificate.clone())
        .set(&k.person, person)
        .set(&k.jwt, jwt)
        .set(&k.device, facts.device.map_or(Value::Null, device_value))
        .set(&k.device_id, device_id)
        .set(
            &k.spiffe_id,
            certificate
                .as_object()
                .ok()
                .and_then(|c| c.get(&k.spiffe_id).cloned())
                .unwrap_or(Value::Null),
        )
        .set(&k.method, request.method)
        .set(&k.path, request.path)
        .set(&k.parsed_path, parsed_path(request.path))
        .set(&k.host, request.host)
        .set(&k.headers, first_values(&headers))
        .set(&k.source_address, source.clone())
        .set(&k.network, {
            let mut n = Builder::new();
            n.set(&k.source, source)
                .opt(&k.country, facts.network.country);
            n.done()
        })
        .set(
            &k.risk,
            facts.risk.map_or(Value::Null, |r| {
                let mut o = Builder::new();
                o.set(&k.level, r.level.as_str())
                    .set(&k.score, u64::from(r.score))
                    .set(&k.signals, strs(&r.signals));
                o.done()
            }),
        )
        .set(
            &k.grants,
            if facts.grants.is_empty() {
                Value::new_array()
            } else {
                serialised(facts.grants)
            },
        )
        .set(&k.block, facts.block.map_or(Value::Null, serialised))
        .set(
            &k.shared_state,
            facts.shared_state.map_or(Value::Null, |s| {
                let mut o = Builder::new();
                o.set(&k.synced, s.synced)
                    .set(&k.age, s.age)
                    .set(&k.stale, s.stale);
                o.done()
            }),
        );
    input.done()
}

/// `value` as the facts document writes it. Only grants and blocks go this way: rare, small,
/// and never on the fast path (no grant in force is an empty array made without serde).
fn serialised<T: serde::Serialize + ?Sized>(value: &T) -> Value {
    match serde_json::to_string(value).map(|json| Value::from_json_str(&json)) {
        Ok(Ok(v)) => v,
        _ => Value::Null,
    }
}

/// Certificates (and identities) whose input parts were built last on this thread: a
/// connection's requests share one certificate, a session's one identity, whose parts are
/// then built once.
const PARTS_PER_THREAD: usize = 64;

type CertificateParts = (crate::tls::PeerCert, Option<Key>, Value, Value);

thread_local! {
    static CERTIFICATES: RefCell<Vec<CertificateParts>> = const { RefCell::new(Vec::new()) };
}

/// `input.certificate` and `input.device_id` of `cert`: made once per certificate and thread,
/// found again by the whole certificate (not its fingerprint alone: a facts document may pair
/// any fields).
fn certificate_parts(cert: &crate::tls::PeerCert, key: Option<Key>) -> (Value, Value) {
    CERTIFICATES.with(|cache| {
        let mut cache = cache.borrow_mut();
        let (_, _, certificate, device_id) = remembered(
            &mut cache,
            PARTS_PER_THREAD,
            |(p, k, _, _)| p.fingerprint == cert.fingerprint && *k == key && p == cert,
            || {
                (
                    cert.clone(),
                    key,
                    certificate_value(cert),
                    device_id(cert, key),
                )
            },
        );
        (certificate.clone(), device_id.clone())
    })
}

fn certificate_value(cert: &crate::tls::PeerCert) -> Value {
    let k = keys();
    let mut o = Builder::new();
    o.set(&k.subject, cert.subject.as_str())
        .opt(&k.common_name, cert.common_name.as_deref())
        .set(&k.issuer, cert.issuer.as_str())
        .set(&k.dns, strs(&cert.dns))
        .set(&k.emails, strs(&cert.emails))
        .set(&k.uris, strs(&cert.uris))
        .opt(&k.spiffe_id, cert.spiffe_id.as_deref())
        .set(&k.serial, crate::hex::encode(&cert.serial))
        .set(&k.fingerprint, cert.fingerprint_hex.as_str())
        .set(&k.not_before, cert.not_before)
        .set(&k.not_after, cert.not_after);
    o.done()
}

type PersonParts = (crate::identity::Identity, Value, Value);

thread_local! {
    static PEOPLE: RefCell<Vec<PersonParts>> = const { RefCell::new(Vec::new()) };
}

/// `input.person` and `input.jwt`: made once per identity and thread (a session's requests
/// bring the same identity), found again by the whole identity.
fn person_parts(p: &crate::identity::Identity) -> (Value, Value) {
    PEOPLE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let (_, person, jwt) = remembered(
            &mut cache,
            PARTS_PER_THREAD,
            |(q, _, _)| q.subject == p.subject && q == p,
            || (p.clone(), person_value(p), claims_value(p)),
        );
        (person.clone(), jwt.clone())
    })
}

fn person_value(p: &crate::identity::Identity) -> Value {
    let k = keys();
    let mut o = Builder::new();
    o.set(&k.subject, p.subject.as_str())
        .opt(&k.email, p.email.as_deref())
        .opt(&k.name, p.name.as_deref())
        .set(&k.groups, strs(&p.groups))
        .set(&k.amr, strs(&p.amr))
        .set(&k.mfa, p.mfa)
        .opt(&k.acr, p.acr.as_deref())
        .set(&k.auth_time, p.auth_time.map_or(Value::Null, Value::from))
        .set(&k.verified_at, p.verified_at)
        .set(&k.claims, json_object(&p.claims));
    o.done()
}

/// The verified claims, as a token's payload would hold them: the extra claims, then the
/// standard ones Vigil read.
fn claims_value(p: &crate::identity::Identity) -> Value {
    let k = keys();
    let mut o = Builder::new();
    for (name, v) in &p.claims {
        o.set_named(name, Value::from(v.clone()));
    }
    o.set(&k.sub, p.subject.as_str())
        .set(&k.groups, strs(&p.groups))
        .set(&k.amr, strs(&p.amr));
    if let Some(email) = &p.email {
        o.set(&k.email, email.as_str());
    }
    if let Some(name) = &p.name {
        o.set(&k.name, name.as_str());
    }
    if let Some(acr) = &p.acr {
        o.set(&k.acr, acr.as_str());
    }
    if let Some(t) = p.auth_time {
        o.set(&k.auth_time, t);
    }
    o.done()
}

fn json_object(map: &BTreeMap<String, serde_json::Value>) -> Value {
    let mut o = Builder::new();
    for (k, v) in map {
        o.set_named(k, Value::from(v.clone()));
    }
    o.done()
}

fn device_value(d: &crate::posture::inventory::Device) -> Value {
    let k = keys();
    let mut o = Builder::new();
    o.opt(&k.fingerprint, d.fingerprint.as_deref())
        .opt(&k.serial, d.serial.as_deref())
        .opt(&k.subject, d.subject.as_deref())
        .set(&k.compliant, d.compliant)
        .set(&k.managed, d.managed)
        .opt(&k.owner, d.owner.as_deref())
        .set(
            &k.os,
            d.os.as_ref().map_or(Value::Null, |os| {
                let mut o = Builder::new();
                o.set(&k.name, os.name.as_str())
                    .set(&k.version, os.version.as_str());
                o.done()
            }),
        )
        .opt(&k.last_check_in, d.last_check_in.as_deref());
    o.done()
}

/// The inventory's key for the certificate, or its fingerprint when there is no inventory.
fn device_id(cert: &crate::tls::PeerCert, key: Option<Key>) -> Value {
    match key {
        None => Value::from(cert.fingerprint_hex.as_str()),
        Some(key) => Inventory::key_of(key, cert).map_or(Value::Null, Value::from),
    }
}

/// `{"devices": {id: record}}` of the inventory as it is now.
fn devices_value(inventory: &Inventory) -> Value {
    let mut o = Builder::new();
    inventory.each_record(|id, device| {
        o.set_named(id, device_value(device));
    });
    o.done()
}

/// `{"name": ["value", ...]}`, lower-case names.
fn headers_value(headers: &Headers<'_>) -> Value {
    let mut by_name: BTreeMap<Value, Vec<Value>> = BTreeMap::new();
    headers.each(|name, value| {
        by_name
            .entry(Value::from(name))
            .or_default()
            .push(Value::from(value));
    });
    Value::from(
        by_name
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// `{"name": "value"}` with a header's values joined by `, `, as OPA's HTTP inputs have them.
fn first_values(headers: &Value) -> Value {
    let Value::Object(map) = headers else {
        return Value::new_object();
    };
    let mut out = BTreeMap::new();
    for (name, values) in map.iter() {
        let joined = match values {
            Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_string().ok().map(|s| s.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
            _ => String::new(),
        };
        out.insert(name.clone(), Value::from(joined));
    }
    Value::from(out)
}

/// `/a/b` as `["a", "b"]`; `/` as `[]`.
fn parsed_path(path: &str) -> Value {
    Value::from(
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(Value::from)
            .collect::<Vec<_>>(),
    )
}
