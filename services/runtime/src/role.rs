//! The roles an API key can have. Settings name them and the auth layer enforces them, so
//! they sit below both.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a key may do (DESIGN §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An ERP or WMS integration: pushes stock and products.
    Erp,
    /// An affiliate network: reads and watches rates, lists incentives.
    Network,
    /// A partner: its own subscription and deliveries.
    Partner,
    /// The merchandising team: overrides, incentives, explanations.
    Merchandiser,
    /// Operators: partners and keys; may call every RPC.
    Admin,
}

impl Role {
    /// Every role, for help texts and validation messages.
    pub const ALL: [Role; 5] = [
        Role::Erp,
        Role::Network,
        Role::Partner,
        Role::Merchandiser,
        Role::Admin,
    ];

    /// The lowercase name used in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Erp => "erp",
            Role::Network => "network",
            Role::Partner => "partner",
            Role::Merchandiser => "merchandiser",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role `{s}` (expected erp, network, partner, merchandiser or admin)"
                )
            })
    }
}
