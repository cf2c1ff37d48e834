//! Per-User-Agent policy with Apache `BrowserMatch` semantics: every rule whose
//! regex is found in the User-Agent applies, in file order, a later rule
//! overriding an earlier one for the same setting.
//!
//! All patterns are compiled once, at load, into one `RegexSet`: classifying a
//! User-Agent is one scan whatever the number of rules. [`RuleSet::classify`] is
//! pure; the connection calls it once, on its first request, and keeps the result.

use super::{ClientSettings, SettingsOverride};
use regex::RegexSet;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// Their patterns, in the same order (for `/connections`, the access
    /// log and the per-rule metrics); shared by every connection that got
    /// this policy from [`Policies`].
    pub names: Arc<[String]>,
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
            names: Arc::from([]),
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
        self.policy(base, self.matching(user_agent))
    }

    /// The indices of the rules whose pattern is found in `user_agent`
    /// (one scan when none is, the common case: no set of matches is made).
    fn matching(&self, user_agent: &str) -> Vec<usize> {
        if self.rules.is_empty() || !self.set.is_match(user_agent) {
            return Vec::new();
        }
        self.set.matches(user_agent).into_iter().collect()
    }

    /// The policy the rules `matched` (in file order) make of `base`.
    fn policy(&self, base: &ClientSettings, matched: Vec<usize>) -> ClientPolicy {
        let mut p = ClientPolicy::base(*base);
        for &i in &matched {
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
        }
        p.names = matched.iter().map(|&i| self.rules[i].pattern.clone()).collect();
        p.matched = matched;
        p
    }
}

/// How many distinct sets of matched rules [`Policies`] keeps a policy for;
/// past it, a new set's policy is made for its connection alone.
const MAX_SHARED_POLICIES: usize = 1024;

/// One configuration's client policies, one per set of matched rules: the
/// connections whose User-Agents matched the same rules share one (a
/// crawler's thousand idle connections hold a pointer each, not a policy
/// and the names of its rules each: 290 B more per connection, measured,
/// before they were shared).
#[derive(Debug)]
pub struct Policies {
    base: Arc<ClientPolicy>,
    shared: Mutex<HashMap<Vec<usize>, Arc<ClientPolicy>>>,
}

impl Policies {
    pub fn new(base: ClientSettings) -> Self {
        Policies {
            base: Arc::new(ClientPolicy::base(base)),
            shared: Mutex::new(HashMap::new()),
        }
    }

    /// The policy of a client no rule matches.
    pub fn base(&self) -> &Arc<ClientPolicy> {
        &self.base
    }

    /// The policy for a User-Agent under `rules` (see [`RuleSet::classify`]).
    pub fn classify(&self, rules: &RuleSet, user_agent: &str) -> Arc<ClientPolicy> {
        let matched = rules.matching(user_agent);
        if matched.is_empty() {
            return self.base.clone();
        }
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = shared.get(&matched) {
            return p.clone();
        }
        let p = Arc::new(rules.policy(&self.base.settings, matched.clone()));
        if shared.len() < MAX_SHARED_POLICIES {
            shared.insert(matched, p.clone());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CONF: &str = r#"
[[user_agent]]
match = "(?i)bot"
reclaim_first = true
[[user_agent]]
match = "Googlebot"
keepalive_timeout = "30s"
"#;

    #[test]
    fn clients_that_matched_the_same_rules_share_one_policy() {
        let cfg = crate::config::parse("t", CONF, &Default::default()).unwrap();
        let policies = Policies::new(cfg.client);
        let google = policies.classify(&cfg.rules, "Mozilla/5.0 (compatible; Googlebot/2.1)");
        let google2 = policies.classify(&cfg.rules, "Googlebot-Image/1.0");
        let bing = policies.classify(&cfg.rules, "Mozilla/5.0 (compatible; bingbot/2.0)");
        let browser = policies.classify(&cfg.rules, "Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0");
        assert!(Arc::ptr_eq(&google, &google2));
        assert!(!Arc::ptr_eq(&google, &bing));
        assert!(Arc::ptr_eq(&browser, policies.base()));
        assert_eq!(google.matched, [0, 1]);
        assert_eq!(&google.names[..], ["(?i)bot", "Googlebot"]);
        assert_eq!(&bing.names[..], ["(?i)bot"]);
        assert!(browser.names.is_empty());
        // The shared policy is the one `classify` makes alone.
        assert_eq!(*google, cfg.rules.classify(&cfg.client, "Googlebot-Image/1.0"));
        assert_eq!(google.settings.keepalive_timeout, Duration::from_secs(30));
        assert!(bing.reclaim_first);
    }
}
