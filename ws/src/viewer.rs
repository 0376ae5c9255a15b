//! Who is watching, and what they may see. The one tenant rule used by every route and stream.

use queue::{Job, ListFilter, Queue, QueueError};
use serde::{Deserialize, Serialize};

/// A panel user's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees and manages everything.
    Admin,
    /// Sees the jobs of its customers' accounts (jobs whose `reseller` is this reseller).
    Reseller,
    /// Sees the jobs of its own account only.
    Customer,
}

impl Role {
    /// The role string used in tokens.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Reseller => "reseller",
            Role::Customer => "customer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "reseller" => Ok(Role::Reseller),
            "customer" => Ok(Role::Customer),
            _ => Err(format!(
                "unknown role {s:?}; roles are admin, reseller, customer"
            )),
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Viewer {
    /// Role.
    pub role: Role,
    /// Token subject (for audit logs).
    pub subject: String,
    /// The customer's account (customers).
    pub account: Option<String>,
    /// The reseller id (resellers; also a customer's reseller when known).
    pub reseller: Option<String>,
}

impl Viewer {
    /// An admin (tests, tools).
    pub fn admin(subject: impl Into<String>) -> Viewer {
        Viewer {
            role: Role::Admin,
            subject: subject.into(),
            account: None,
            reseller: None,
        }
    }

    /// Whether this viewer may see a job concerning `account` of `reseller`.
    /// A customer without an account, or a reseller without an id, sees nothing.
    pub fn can_see(&self, account: Option<&str>, reseller: Option<&str>) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Reseller => self.reseller.is_some() && reseller == self.reseller.as_deref(),
            Role::Customer => self.account.is_some() && account == self.account.as_deref(),
        }
    }

    /// [`Viewer::can_see`] for a job.
    pub fn can_see_job(&self, job: &Job) -> bool {
        self.can_see(job.account.as_deref(), job.reseller.as_deref())
    }

    /// The tenant this viewer acts for, as a key: `r:<reseller>` or `c:<account>`; `None` for
    /// admins. Used for per-tenant socket caps and (stored in Redis) idempotency-key scopes.
    pub fn tenant(&self) -> Option<String> {
        match self.role {
            Role::Admin => None,
            Role::Reseller => Some(format!("r:{}", self.reseller.as_deref().unwrap_or(""))),
            Role::Customer => Some(format!("c:{}", self.account.as_deref().unwrap_or(""))),
        }
    }

    /// The jobs matching `f` that this viewer may see ([`Viewer::narrow`], then list).
    pub async fn list(&self, q: &Queue, f: ListFilter) -> Result<Vec<Job>, QueueError> {
        match self.narrow(f) {
            Some(f) => q.list(&f).await,
            None => Ok(Vec::new()),
        }
    }

    /// Narrow a list filter to what this viewer may see; `None` when the result must be empty
    /// (a customer asking for another account).
    pub fn narrow(&self, mut f: ListFilter) -> Option<ListFilter> {
        match self.role {
            Role::Admin => Some(f),
            Role::Reseller => {
                let r = self.reseller.clone()?;
                if f.reseller.as_ref().is_some_and(|x| *x != r) {
                    return None;
                }
                f.reseller = Some(r);
                Some(f)
            }
            Role::Customer => {
                let a = self.account.clone()?;
                if f.account.as_ref().is_some_and(|x| *x != a) {
                    return None;
                }
                f.account = Some(a);
                Some(f)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(role: Role, account: Option<&str>, reseller: Option<&str>) -> Viewer {
        Viewer {
            role,
            subject: "t".into(),
            account: account.map(Into::into),
            reseller: reseller.map(Into::into),
        }
    }

    #[test]
    fn tenant_rules() {
        let admin = v(Role::Admin, None, None);
        let res = v(Role::Reseller, None, Some("r1"));
        let cust = v(Role::Customer, Some("a1"), Some("r1"));
        assert!(admin.can_see(None, None));
        assert!(res.can_see(Some("a1"), Some("r1")));
        assert!(!res.can_see(Some("a2"), Some("r2")));
        assert!(!res.can_see(None, None));
        assert!(cust.can_see(Some("a1"), Some("r1")));
        assert!(!cust.can_see(Some("a2"), Some("r1")));
        assert!(!cust.can_see(None, None));
        // Ids missing from the token see nothing rather than everything.
        assert!(!v(Role::Customer, None, None).can_see(None, None));
        assert!(!v(Role::Reseller, None, None).can_see(None, None));
    }

    #[test]
    fn narrowing_list_filters() {
        let cust = v(Role::Customer, Some("a1"), None);
        let f = cust.narrow(ListFilter::default()).unwrap();
        assert_eq!(f.account.as_deref(), Some("a1"));
        let other = ListFilter {
            account: Some("a2".into()),
            ..Default::default()
        };
        assert!(cust.narrow(other).is_none());
        let res = v(Role::Reseller, None, Some("r1"));
        assert_eq!(
            res.narrow(ListFilter::default())
                .unwrap()
                .reseller
                .as_deref(),
            Some("r1")
        );
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn tenant_keys() {
        assert_eq!(v(Role::Admin, Some("a1"), Some("r1")).tenant(), None);
        assert_eq!(
            v(Role::Reseller, Some("a1"), Some("r1"))
                .tenant()
                .as_deref(),
            Some("r:r1")
        );
        assert_eq!(
            v(Role::Customer, Some("a1"), Some("r1"))
                .tenant()
                .as_deref(),
            Some("c:a1")
        );
    }
}
