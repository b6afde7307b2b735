//! Tokens, scopes, tenants and the principal a request acts as.
//!
//! A token is `stl_<id>_<64 hex>`: an id to find its record and 256 random bits. The store keeps
//! only the sha256 of the whole string, compared in constant time. Every way a token can be bad
//! (malformed, unknown, wrong secret, expired, revoked, tenant no longer allowed) is one
//! indistinguishable outcome, so a caller learns nothing about which. Tokens are never logged.

use crate::clock::UnixMs;
use crate::domain::tokens::tables::TokenRecord;
use crate::ids;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Read,
    Operate,
    Approve,
    Admin,
    Audit,
    /// A deploy agent (`stella agent run`): leases its environment's jobs, fetches the sealed
    /// plugins and artifacts they name, reports their outcome. Its token belongs to the site.
    Agent,
}

impl Scope {
    pub const ALL: [Scope; 6] = [Scope::Read, Scope::Operate, Scope::Approve, Scope::Admin, Scope::Audit, Scope::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "orchestrator:read",
            Scope::Operate => "orchestrator:operate",
            Scope::Approve => "orchestrator:approve",
            Scope::Admin => "orchestrator:admin",
            Scope::Audit => "orchestrator:audit",
            Scope::Agent => "orchestrator:agent",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    /// Parses a comma-separated list, naming the first unknown scope and the allowed ones.
    pub fn parse_list(list: &str) -> Result<Vec<Scope>, String> {
        let mut scopes = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let scope = Scope::parse(part).ok_or_else(|| {
                let allowed: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope {part:?}; allowed: {}", allowed.join(", "))
            })?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        if scopes.is_empty() {
            return Err("at least one scope is required".to_owned());
        }
        scopes.sort();
        Ok(scopes)
    }
}

/// Who a request acts as, after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant whose objects it may see; `None` for the local administrator (all tenants).
    pub tenant: Option<String>,
    /// Recorded as the ledger actor.
    pub actor: String,
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// The owner of the Unix socket (or root): administrator of every tenant.
    pub fn local_admin(uid: u32) -> Self {
        Self { tenant: None, actor: format!("local:uid={uid}"), scopes: Scope::ALL.to_vec() }
    }

    /// `admin` implies every scope; every scope but `agent` implies `read` (a deploy agent
    /// reads only its environment, where a route says so).
    pub fn has(&self, needed: Scope) -> bool {
        self.scopes.contains(&needed)
            || self.scopes.contains(&Scope::Admin)
            || (needed == Scope::Read && self.scopes.iter().any(|s| *s != Scope::Agent))
    }

    /// Whether this principal may see an object of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }
}

/// A freshly minted token: the secret string (shown once) and what the store keeps.
#[derive(Debug)]
pub struct NewToken {
    pub id: String,
    pub secret: String,
    pub sha256: String,
}

pub fn mint() -> NewToken {
    let id = ids::random_hex(6);
    let secret = format!("stl_{id}_{}", ids::random_hex(32));
    let sha256 = hash(&secret);
    NewToken { id: format!("tok_{id}"), secret, sha256 }
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The record id a presented token claims, if it has the token shape at all.
pub fn claimed_id(token: &str) -> Option<String> {
    let rest = token.strip_prefix("stl_")?;
    let (id, secret) = rest.split_once('_')?;
    let shaped = id.len() == 12
        && secret.len() == 64
        && id.bytes().chain(secret.bytes()).all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    shaped.then(|| format!("tok_{id}"))
}

/// The tenant of deploy agents' tokens: the site's own objects (environments, deployments and
/// their runs), never a tenant's.
pub const SITE_TENANT: &str = crate::domain::release::SITE_TENANT;

/// Whether a token of `tenant` with `scopes` may exist: its tenant is allowed, or it is a
/// deploy agent's token (scope `orchestrator:agent` alone) of the site.
pub fn tenant_allowed(tenant: &str, scopes: &[String], allowed_tenants: &[String]) -> bool {
    allowed_tenants.iter().any(|t| t == tenant)
        || (tenant == SITE_TENANT && !scopes.is_empty() && scopes.iter().all(|s| s == Scope::Agent.as_str()))
}

/// Checks a presented token against its record. `None` means "not authenticated", whatever
/// the reason; the comparison of hashes runs in constant time.
pub fn check(
    token: &str,
    record: Option<&TokenRecord>,
    now_ms: UnixMs,
    allowed_tenants: &[String],
) -> Option<Principal> {
    let record = record?;
    let presented = hash(token);
    let matches: bool = presented.as_bytes().ct_eq(record.sha256.as_bytes()).into();
    let live = record.revoked_ms.is_none() && record.expires_ms.is_none_or(|e| now_ms < e);
    let allowed = tenant_allowed(&record.tenant, &record.scopes, allowed_tenants);
    if !(matches && live && allowed) {
        return None;
    }
    Some(Principal {
        tenant: Some(record.tenant.clone()),
        actor: format!("token:{}", record.id),
        scopes: record.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(t: &NewToken) -> TokenRecord {
        TokenRecord {
            id: t.id.clone(),
            tenant: "acme".into(),
            scopes: vec!["orchestrator:read".into()],
            sha256: t.sha256.clone(),
            description: None,
            created_ms: 0,
            created_by: "test".into(),
            expires_ms: Some(1_000),
            revoked_ms: None,
            revoked_by: None,
            revoked_reason: None,
        }
    }

    #[test]
    fn a_minted_token_checks_and_every_bad_class_fails() {
        let t = mint();
        let tenants = vec!["acme".to_owned()];
        assert_eq!(claimed_id(&t.secret).as_deref(), Some(t.id.as_str()));
        let rec = record(&t);
        assert!(check(&t.secret, Some(&rec), 999, &tenants).is_some());
        assert!(check(&t.secret, Some(&rec), 1_000, &tenants).is_none(), "expired");
        let mut revoked = rec.clone();
        revoked.revoked_ms = Some(5);
        assert!(check(&t.secret, Some(&revoked), 0, &tenants).is_none(), "revoked");
        assert!(check(&t.secret, Some(&rec), 0, &["other".to_owned()]).is_none(), "tenant gone");
        let forged = format!("{}0", &t.secret[..t.secret.len() - 1]);
        assert!(check(&forged, Some(&rec), 0, &tenants).is_none() || forged == t.secret);
        assert!(claimed_id("Bearer nonsense").is_none());
    }

    #[test]
    fn scopes_parse_and_imply() {
        assert!(Scope::parse_list("orchestrator:read,orchestrator:bogus").unwrap_err().contains("orchestrator:bogus"));
        let p = Principal { tenant: Some("a".into()), actor: "x".into(), scopes: vec![Scope::Operate] };
        assert!(p.has(Scope::Read) && p.has(Scope::Operate) && !p.has(Scope::Admin));
        assert!(Principal::local_admin(0).has(Scope::Audit));
    }
}
