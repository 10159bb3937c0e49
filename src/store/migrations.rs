//! The database as a whole: which migrations it has applied, whether it answers, its pool.

use super::common::statements;
use crate::error::Result;

statements! {
    /// Applies pending migrations; returns "<version> <description>" of each one applied.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        let before = self.applied_migrations().await?;
        anyhow::Context::context(Self::MIGRATOR.run(&self.pool).await, "migration failed")?;
        Ok(Self::MIGRATOR
            .iter()
            .filter(|m| !before.contains(&m.version))
            .map(|m| format!("{} {}", m.version, m.description))
            .collect())
    }

    /// Migrations this binary knows that the database has not applied yet.
    pub async fn pending_migrations(&self) -> Result<usize> {
        let applied = self.applied_migrations().await?;
        Ok(Self::MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count())
    }

    async fn applied_migrations(&self) -> Result<Vec<i64>> {
        if !self.has_migrations_table().await? {
            return Ok(Vec::new());
        }
        Ok(
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Pool connections: (open, idle, maximum).
    pub fn pool_usage(&self) -> (u32, u32, u32) {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        (
            self.pool.size(),
            idle,
            self.pool.options().get_max_connections(),
        )
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
