//! Per-User-Agent policy with Apache `BrowserMatch` semantics: every rule whose
//! regex is found in the User-Agent applies, in file order, a later rule
//! overriding an earlier one for the same setting.
//!
//! All patterns are compiled once, at load, into one `RegexSet`: classifying a
//! User-Agent is one scan whatever the number of rules. [`RuleSet::classify`] is
//! pure; the connection calls it once, on its first request, and keeps the result.

use super::{ClientSettings, SettingsOverride};
use regex::RegexSet;
use std::sync::Arc;

/// One `[[user_agent]]` rule as configured.
#[derive(Debug, Clone)]
pub struct UaRule {
    pub pattern: String,
    pub nokeepalive: Option<bool>,
    pub downgrade_1_0: Option<bool>,
    pub force_response_1_0: Option<bool>,
    /// `[[route]]`'s keys of the same names, per User-Agent.
    pub request_buffering: Option<bool>,
    pub response_buffering: Option<bool>,
    /// Closed before other idle connections when room must be made.
    pub reclaim_first: Option<bool>,
    pub overrides: SettingsOverride,
}

impl UaRule {
    /// The rule as it would be written in the file (for `finguard check`).
    pub fn to_table(&self) -> toml::Table {
        use toml::Value;
        let mut t = toml::Table::new();
        t.insert("match".into(), Value::String(self.pattern.clone()));
        for (k, v) in [
            ("nokeepalive", self.nokeepalive),
            ("downgrade_1_0", self.downgrade_1_0),
            ("force_response_1_0", self.force_response_1_0),
            ("request_buffering", self.request_buffering),
            ("response_buffering", self.response_buffering),
            ("reclaim_first", self.reclaim_first),
        ] {
            if let Some(v) = v {
                t.insert(k.into(), Value::Boolean(v));
            }
        }
        t.extend(self.overrides.to_table(false));
        t
    }
}

/// What one client connection gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPolicy {
    pub settings: ClientSettings,
    /// Answer with `Connection: close`, then close.
    pub nokeepalive: bool,
    /// Treat the request as HTTP/1.0: no chunked response.
    pub downgrade_1_0: bool,
    /// Answer with an `HTTP/1.0` status line.
    pub force_response_1_0: bool,
    /// Set by a rule: overrides `[buffer]` (see `config::buffer::decide`).
    pub request_buffering: Option<bool>,
    pub response_buffering: Option<bool>,
    /// Idle, it is closed before any other when room must be made.
    pub reclaim_first: bool,
    /// Indices of the rules that matched, in file order.
    pub matched: Vec<usize>,
}

impl ClientPolicy {
    pub fn base(settings: ClientSettings) -> Self {
        ClientPolicy {
            settings,
            nokeepalive: false,
            downgrade_1_0: false,
            force_response_1_0: false,
            request_buffering: None,
            response_buffering: None,
            reclaim_first: false,
            matched: Vec::new(),
        }
    }

    /// Whether this connection may serve another request after the current one.
    pub fn allows_keepalive(&self) -> bool {
        self.settings.keepalive && !self.nokeepalive
    }
}

/// The compiled `[[user_agent]]` rules.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<UaRule>,
    set: RegexSet,
}

impl RuleSet {
    /// Compiles the rules; on a bad pattern, returns its index and the reason.
    pub fn new(rules: Vec<UaRule>) -> Result<Self, (usize, String)> {
        for (i, r) in rules.iter().enumerate() {
            if let Err(e) = regex::Regex::new(&r.pattern) {
                return Err((i, format!("invalid regex {:?}: {e}", r.pattern)));
            }
        }
        let set = RegexSet::new(rules.iter().map(|r| r.pattern.as_str()))
            .map_err(|e| (0, format!("cannot compile the rules together: {e}")))?;
        Ok(RuleSet { rules, set })
    }

    pub fn rules(&self) -> &[UaRule] {
        &self.rules
    }

    /// The policy for a User-Agent (an absent header is the empty string).
    pub fn classify(&self, base: &ClientSettings, user_agent: &str) -> ClientPolicy {
        let mut p = ClientPolicy::base(*base);
        if self.rules.is_empty() {
            return p;
        }
        for i in self.set.matches(user_agent).iter() {
            let r = &self.rules[i];
            r.overrides.apply(&mut p.settings);
            if let Some(v) = r.nokeepalive {
                p.nokeepalive = v;
            }
            if let Some(v) = r.downgrade_1_0 {
                p.downgrade_1_0 = v;
            }
            if let Some(v) = r.force_response_1_0 {
                p.force_response_1_0 = v;
            }
            p.request_buffering = r.request_buffering.or(p.request_buffering);
            p.response_buffering = r.response_buffering.or(p.response_buffering);
            if let Some(v) = r.reclaim_first {
                p.reclaim_first = v;
            }
            p.matched.push(i);
        }
        p
    }

    /// Like [`classify`](Self::classify), but shares one allocation for every
    /// User-Agent that matches no rule (the common case).
    pub fn classify_shared(&self, base: &Arc<ClientPolicy>, user_agent: &str) -> Arc<ClientPolicy> {
        if self.rules.is_empty() || !self.set.is_match(user_agent) {
            return base.clone();
        }
        Arc::new(self.classify(&base.settings, user_agent))
    }
}
