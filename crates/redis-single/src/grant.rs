//! One grant on the server: extend and release by compare-and-act on our grant id.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fencelock_core::{LeaseOps, Result};

use crate::lock::Inner;
use crate::scripts::EXTEND;

pub(crate) struct RedisGrant {
    pub inner: Arc<Inner>,
    pub key: String,
    pub grant: String,
}

#[async_trait]
impl LeaseOps for RedisGrant {
    async fn extend(&self, ttl: Duration) -> Result<Option<Duration>> {
        let mut invocation = EXTEND.key(self.inner.keys.lock(&self.key));
        invocation.arg(&self.grant).arg(ttl.as_millis() as u64);
        let n: i64 = self.inner.invoke_idempotent("extend script", &invocation).await?;
        Ok((n == 1).then_some(ttl))
    }

    async fn release(&self) -> Result<bool> {
        self.inner.release(&self.key, &self.grant).await
    }
}
