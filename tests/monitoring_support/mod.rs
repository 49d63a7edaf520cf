//! Shared by the monitoring tests (`monitoring_config`, `monitoring_live`, `alert_path`): paths
//! and external tools, the rule files read into [`Rule`]s, the dashboards and their queries, and
//! the PromQL lexer with the contract checker. Every PromQL expression of the rules and dashboards
//! comes from here, so the static check and the live check see the same list.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Helpers

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn mon(rel: &str) -> PathBuf {
    root().join("monitoring").join(rel)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some(ext))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *.{ext} in {}", dir.display());
    out
}

/// The path of an external tool, or a failure that says how to install it.
pub fn tool(name: &str) -> PathBuf {
    let mut dirs = vec![root().join(".tools/bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` was not found on PATH. Run scripts/install-test-tools (it installs the Debian packages \
         `prometheus` and `prometheus-alertmanager`, which provide promtool, amtool and alertmanager), then rerun."
    );
}

pub fn alertmanager_binary() -> PathBuf {
    for name in ["prometheus-alertmanager", "alertmanager"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
            .unwrap_or(None);
        if let Some(path) = found {
            return path;
        }
    }
    tool("prometheus-alertmanager")
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(root()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn assert_ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what} failed:\n{}", text(out));
}

// ---------------------------------------------------------------------------------------------
// Minimal YAML reading for the files this repository writes (rule files, promtool test files).

pub fn yaml_scalar(raw: &str) -> String {
    let s = raw.trim();
    if let Some(inner) = s.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
        return inner.replace("''", "'");
    }
    if s.starts_with('"') {
        return serde_json::from_str::<String>(s).unwrap_or_else(|e| panic!("bad quoted scalar {s}: {e}"));
    }
    s.to_string()
}

pub fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub file: String,
    pub alert: Option<String>,
    pub record: Option<String>,
    pub expr: String,
    pub for_: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Rule {
    pub fn name(&self) -> &str {
        self.alert.as_deref().or(self.record.as_deref()).unwrap_or("")
    }
}

pub fn parse_rules(path: &Path) -> Vec<Rule> {
    let text = read(path);
    let lines: Vec<&str> = text.lines().collect();
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let mut rules = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        let (is_alert, name) = if let Some(n) = t.strip_prefix("- alert:") {
            (true, yaml_scalar(n))
        } else if let Some(n) = t.strip_prefix("- record:") {
            (false, yaml_scalar(n))
        } else {
            i += 1;
            continue;
        };
        let field_indent = indent_of(line) + 2;
        let mut rule = Rule {
            file: file.clone(),
            alert: is_alert.then(|| name.clone()),
            record: (!is_alert).then(|| name.clone()),
            expr: String::new(),
            for_: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        };
        i += 1;
        while i < lines.len() {
            let l = lines[i];
            if l.trim().is_empty() {
                i += 1;
                continue;
            }
            if indent_of(l) < field_indent || (indent_of(l) == field_indent && l.trim_start().starts_with("- ")) {
                break;
            }
            let t = l.trim_start();
            if let Some(v) = t.strip_prefix("expr:") {
                let v = v.trim();
                if v == "|-" || v == "|" || v == ">-" {
                    let mut body = Vec::new();
                    i += 1;
                    while i < lines.len() && (lines[i].trim().is_empty() || indent_of(lines[i]) > field_indent) {
                        body.push(lines[i].trim());
                        i += 1;
                    }
                    rule.expr = body.join(if v == ">-" { " " } else { "\n" }).trim().to_string();
                    continue;
                }
                rule.expr = yaml_scalar(v);
            } else if let Some(v) = t.strip_prefix("for:") {
                rule.for_ = Some(yaml_scalar(v));
            } else if t == "labels:" || t == "annotations:" {
                let is_labels = t == "labels:";
                i += 1;
                while i < lines.len() && indent_of(lines[i]) > field_indent && !lines[i].trim().is_empty() {
                    let (k, v) = lines[i].trim().split_once(':').expect("key: value");
                    let map = if is_labels { &mut rule.labels } else { &mut rule.annotations };
                    map.insert(k.trim().to_string(), yaml_scalar(v));
                    i += 1;
                }
                continue;
            }
            i += 1;
        }
        assert!(!rule.expr.is_empty(), "{file}: rule {name} has no expr");
        rules.push(rule);
    }
    rules
}

pub fn all_rules() -> Vec<Rule> {
    files_with_ext(&mon("prometheus/rules"), "yml").iter().flat_map(|p| parse_rules(p)).collect()
}

pub fn dashboards() -> Vec<(PathBuf, Value)> {
    files_with_ext(&mon("grafana/dashboards"), "json")
        .into_iter()
        .map(|p| {
            let v: Value = serde_json::from_str(&read(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// PromQL against the metrics contract

pub const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg",
    "avg_over_time",
    "bottomk",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "delta",
    "deriv",
    "exp",
    "floor",
    "group",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "predict_linear",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev",
    "stddev_over_time",
    "stdvar",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "vector",
];
pub const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"];
pub const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

#[derive(Debug, PartialEq)]
pub enum Tok {
    Ident(String),
    Str(String),
    Num,
    Punct(String),
}

pub fn lex(expr: &str) -> Result<Vec<Tok>, String> {
    Ok(lex_spanned(expr)?.into_iter().map(|(t, _)| t).collect())
}

/// The tokens with the range of characters (not bytes) each one covers in `expr`.
pub fn lex_spanned(expr: &str) -> Result<Vec<(Tok, std::ops::Range<usize>)>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), start..i));
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            // numbers and durations (5m, 1h30m, 1e6)
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push((Tok::Num, start..i));
        } else if c == '"' || c == '\'' || c == '`' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            while i < chars.len() && chars[i] != quote {
                if chars[i] == '\\' && quote != '`' {
                    i += 1;
                }
                if i < chars.len() {
                    s.push(chars[i]);
                }
                i += 1;
            }
            if i >= chars.len() {
                return Err("unterminated string".into());
            }
            i += 1;
            out.push((Tok::Str(s), start..i));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["!=", "=~", "!~", "==", ">=", "<="].contains(&two.as_str()) {
                i += 2;
                out.push((Tok::Punct(two), start..i));
            } else {
                i += 1;
                out.push((Tok::Punct(c.to_string()), start..i));
            }
        }
    }
    Ok(out)
}

/// The vector selectors of an expression (`name{matchers}` as written, without range or
/// offset), in order of appearance: what must exist for the expression to show real data,
/// whatever `or vector(0)` fallbacks it has. Walks the tokens as [`check_promql`] does.
pub fn vector_selectors(expr: &str) -> Result<Vec<String>, String> {
    let toks = lex_spanned(expr)?;
    let chars: Vec<char> = expr.chars().collect();
    let punct = |i: usize, p: &str| matches!(toks.get(i), Some((Tok::Punct(x), _)) if x == p);
    let skip_to = |mut i: usize, close: &str| {
        while i < toks.len() && !punct(i, close) {
            i += 1;
        }
        i + 1
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Ident(id) if LABEL_LISTS.contains(&id.as_str()) && punct(i + 1, "(") => i = skip_to(i + 2, ")"),
            Tok::Ident(id) if KEYWORDS.contains(&id.as_str()) || LABEL_LISTS.contains(&id.as_str()) => i += 1,
            Tok::Ident(_) if punct(i + 1, "(") => i += 1,
            Tok::Ident(id)
                if FUNCTIONS.contains(&id.as_str())
                    && matches!(toks.get(i + 1), Some((Tok::Ident(n), _)) if n == "by" || n == "without") =>
            {
                i += 1
            }
            Tok::Ident(_) => {
                let start = toks[i].1.start;
                let mut end = toks[i].1.end;
                i += 1;
                if punct(i, "{") {
                    i = skip_to(i, "}");
                    end = toks[i - 1].1.end;
                }
                out.push(chars[start..end].iter().collect());
            }
            Tok::Punct(p) if p == "{" => i = skip_to(i, "}"),
            Tok::Punct(p) if p == "[" => i = skip_to(i, "]"),
            _ => i += 1,
        }
    }
    Ok(out)
}

/// Labels of a series: `None` for an unknown name.
pub type Contract = BTreeMap<String, BTreeMap<String, Option<Vec<String>>>>;

pub fn contract() -> Contract {
    let v: Value = serde_json::from_str(&read(&mon("metrics.json"))).expect("metrics.json");
    let mut out = Contract::new();
    for (name, labels) in v["series"].as_object().expect("series") {
        let mut m = BTreeMap::new();
        for (label, values) in labels.as_object().unwrap() {
            let vals = values.as_array().map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect());
            m.insert(label.clone(), vals);
        }
        out.insert(name.clone(), m);
    }
    out
}

/// Literal alternatives of a regex matcher that must be known values; patterns are skipped.
pub fn regex_literals<'a>(re: &'a str, known: &[String]) -> Vec<&'a str> {
    re.split('|')
        .filter(|alt| {
            let has_meta = alt.chars().any(|c| "*+?()[]{}^$\\".contains(c));
            let has_dot = alt.contains('.');
            !has_meta && (!has_dot || known.iter().any(|k| k == alt))
        })
        .collect()
}

/// Problems of one PromQL expression against the contract and the recording rules.
pub fn check_promql(expr: &str, contract: &Contract, recorded: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let toks = match lex(expr) {
        Ok(t) => t,
        Err(e) => return vec![format!("{e} in {expr}")],
    };
    let mut problems = Vec::new();
    let mut used_labels: BTreeSet<String> = BTreeSet::new();
    let mut list_labels: Vec<String> = Vec::new();
    let mut i = 0;
    let next_is = |i: usize, p: &str| matches!(toks.get(i + 1), Some(Tok::Punct(x)) if x == p);
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(id) if LABEL_LISTS.contains(&id.as_str()) => {
                if next_is(i, "(") {
                    i += 2;
                    while i < toks.len() && toks[i] != Tok::Punct(")".into()) {
                        if let Tok::Ident(l) = &toks[i] {
                            list_labels.push(l.clone());
                        }
                        i += 1;
                    }
                }
                i += 1;
            }
            Tok::Ident(id) if KEYWORDS.contains(&id.as_str()) => i += 1,
            // `sum by (le) (...)`: an aggregation with its grouping before the argument.
            Tok::Ident(id)
                if FUNCTIONS.contains(&id.as_str())
                    && matches!(toks.get(i + 1), Some(Tok::Ident(n)) if n == "by" || n == "without") =>
            {
                i += 1
            }
            Tok::Ident(id) if next_is(i, "(") => {
                if !FUNCTIONS.contains(&id.as_str()) {
                    problems.push(format!("unknown function {id}"));
                }
                i += 1;
            }
            Tok::Ident(name) => {
                // A series (from the contract) or a recording rule.
                let labels: Option<BTreeMap<String, Option<Vec<String>>>> = if let Some(l) = contract.get(name) {
                    Some(l.clone())
                } else {
                    recorded.get(name).map(|ls| ls.iter().map(|l| (l.clone(), None)).collect())
                };
                let Some(labels) = labels else {
                    problems.push(format!("{name} is neither a series of METRICS.md nor a recording rule"));
                    i += 1;
                    continue;
                };
                used_labels.extend(labels.keys().cloned());
                i += 1;
                if next_is(i - 1, "{") {
                    i += 1;
                    while i < toks.len() && toks[i] != Tok::Punct("}".into()) {
                        match (&toks[i], toks.get(i + 1), toks.get(i + 2)) {
                            (Tok::Ident(label), Some(Tok::Punct(op)), Some(Tok::Str(value))) => {
                                match labels.get(label) {
                                    None => problems.push(format!("{name} has no label {label}")),
                                    Some(Some(known)) if !value.contains('$') => {
                                        let literals: Vec<&str> = if op == "=~" || op == "!~" {
                                            regex_literals(value, known)
                                        } else {
                                            vec![value.as_str()]
                                        };
                                        for lit in literals {
                                            if !known.iter().any(|k| k == lit) {
                                                problems.push(format!(
                                                    "{name}{{{label}{op}{value:?}}}: {lit:?} is not a value of {label}"
                                                ));
                                            }
                                        }
                                    }
                                    _ => {}
                                }
                                i += 3;
                            }
                            (Tok::Punct(p), _, _) if p == "," => i += 1,
                            (t, _, _) => {
                                problems.push(format!("unexpected {t:?} in the selector of {name}"));
                                i += 1;
                            }
                        }
                    }
                    i += 1;
                }
            }
            Tok::Punct(p) if p == "{" => {
                problems.push("selector without a metric name".into());
                i += 1;
            }
            Tok::Punct(p) if p == "[" => {
                while i < toks.len() && toks[i] != Tok::Punct("]".into()) {
                    i += 1;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    for l in list_labels {
        if !used_labels.contains(&l) {
            problems.push(format!("label {l} in by/on/without is carried by none of the series of the expression"));
        }
    }
    problems
}

pub fn recorded_series() -> BTreeMap<String, BTreeSet<String>> {
    all_rules().into_iter().filter_map(|r| r.record.map(|name| (name, r.labels.keys().cloned().collect()))).collect()
}

/// Grafana macros and variables replaced so the expression is plain PromQL; every variable
/// reads `.*` (what "All" sends).
pub fn grafana_to_promql(expr: &str) -> String {
    substitute_grafana(expr, &BTreeMap::new())
}

/// Grafana's interpolation of a query: `$__rate_interval` (5m: four 15 s scrapes plus margin, and
/// long enough to hold a whole test run), `$__interval` (1m), `$__range` (1h), and each
/// `$name`/`${name}` from `vars`, or `.*` (the "All" value of every variable here) when unset.
pub fn substitute_grafana(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut s = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h");
    let mut from = 0;
    while let Some(pos) = s[from..].find('$').map(|p| p + from) {
        let end = s[pos + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '{' || c == '}'))
            .map_or(s.len(), |e| pos + 1 + e);
        let name = s[pos + 1..end].trim_start_matches('{').trim_end_matches('}').to_string();
        let value = vars.get(&name).cloned().unwrap_or_else(|| ".*".to_string());
        s.replace_range(pos..end, &value);
        from = pos + value.len();
    }
    s
}

pub struct DashQuery {
    pub origin: String,
    pub expr: String,
}

pub fn dashboard_queries() -> Vec<DashQuery> {
    let mut out = Vec::new();
    for (path, d) in dashboards() {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(DashQuery {
                    origin: format!("{file} panel {:?} {}", p["title"], t["refId"]),
                    expr: t["expr"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Durations and the Prometheus HTTP API (the live tests)

/// A Prometheus duration of one unit (`30s`, `5m`, `1h`, `2d`), as the rule and Alertmanager
/// files write them.
pub fn prom_duration(s: &str) -> std::time::Duration {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or_else(|| panic!("duration without unit: {s:?}"));
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|e| panic!("duration {s:?}: {e}"));
    let secs = match unit {
        "ms" => return std::time::Duration::from_millis(n),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "w" => n * 604_800,
        _ => panic!("duration {s:?}: unknown unit {unit:?}"),
    };
    std::time::Duration::from_secs(secs)
}

/// One sample of an instant query: its labels (with `__name__` when it has one) and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// The HTTP API of a Prometheus on loopback.
#[derive(Clone)]
pub struct PromApi {
    pub base: String,
    pub http: reqwest::Client,
}

impl PromApi {
    pub fn new(port: u16) -> PromApi {
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(20)).build().expect("client");
        PromApi { base: format!("http://127.0.0.1:{port}"), http }
    }

    /// GET a path of the API; the JSON body, or why there is none.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let resp =
            self.http.get(format!("{}{path}", self.base)).query(query).send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{path}: HTTP {status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{path}: HTTP {status}: {body}"));
        }
        Ok(v)
    }

    /// An instant query (POSTed: expressions can be long). `Err` for a PromQL error.
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let resp = self
            .http
            .post(format!("{}/api/v1/query", self.base))
            .form(&[("query", expr)])
            .send()
            .await
            .map_err(|e| format!("{expr}: {e}"))?;
        let body: Value = resp.json().await.map_err(|e| format!("{expr}: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{expr}: {body}"));
        }
        let data = &body["data"];
        let rows = match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            // A scalar (e.g. `time()`) is one unlabelled sample.
            Some("scalar") => vec![serde_json::json!({"metric": {}, "value": data["result"]})],
            other => return Err(format!("{expr}: unexpected result type {other:?}")),
        };
        Ok(rows
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect())
    }

    /// Waits (bounded) until `/-/ready` answers 200.
    pub async fn wait_ready(&self, bound: std::time::Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + bound;
        loop {
            if let Ok(resp) = self.http.get(format!("{}/-/ready", self.base)).send().await
                && resp.status() == 200
            {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("{} not ready within {bound:?}", self.base));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Seconds since the Unix epoch, as Prometheus timestamps are.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}
