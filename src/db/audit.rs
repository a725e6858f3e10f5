//! Audit rows into Aether's `audit_logs` table.

use async_trait::async_trait;
use sea_orm::{ActiveModelTrait, Set};

use super::entities::audit_logs;
use super::{DbHandle, store_error};
use crate::domain::audit::{AuditRecord, AuditSink};
use crate::error::StoreError;

/// Inserts audit rows with sea-orm.
pub struct SeaOrmAuditSink {
    db: DbHandle,
}

impl SeaOrmAuditSink {
    /// A sink over `db`.
    pub fn new(db: impl Into<DbHandle>) -> Self {
        Self { db: db.into() }
    }
}

/// A random uuid4 in Aether's text form (ids have no database default).
fn uuid4() -> String {
    let mut bytes = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // Without system randomness, fall back to the clock: still unique enough for a row id.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_be_bytes();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[async_trait]
impl AuditSink for SeaOrmAuditSink {
    async fn write(&self, record: &AuditRecord) -> Result<(), StoreError> {
        audit_logs::ActiveModel {
            id: Set(uuid4()),
            event_type: Set(record.event_type.to_owned()),
            user_id: Set(record.user_id.clone()),
            api_key_id: Set(None),
            description: Set(record.description.clone()),
            ip_address: Set(record.ip_address.clone()),
            user_agent: Set(Some(record.user_agent.clone())),
            request_id: Set(Some(record.request_id.clone())),
            event_metadata: Set(Some(record.event_metadata.clone())),
            status_code: Set(None),
            error_message: Set(record.error_message.clone()),
            created_at: Set(chrono::Utc::now().fixed_offset()),
        }
        .insert(self.db.get()?)
        .await
        .map(|_| ())
        .map_err(|e| store_error(&e))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_uuid4_text() {
        let id = super::uuid4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
    }
}
