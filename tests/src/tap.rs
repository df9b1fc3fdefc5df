//! The queue tap: a test-owned queue on a stack's exchange, read with `basic_get`.

use anyhow::Result;

/// A test-owned queue on the exchange, read with `basic_get`.
pub struct Tap {
    conn: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
    durable: bool,
    cfg: hyperfleet_common::broker::BrokerConfig,
    seen: std::sync::Mutex<Vec<serde_json::Value>>,
}

impl Tap {
    /// A queue of its own (`<exchange>-tap-<uuid>`) bound to `cfg`'s exchange with `binding`.
    pub(crate) async fn new(cfg: hyperfleet_common::broker::BrokerConfig, binding: &str, durable: bool) -> Result<Tap> {
        let queue = format!("{}-tap-{}", cfg.exchange, uuid::Uuid::new_v4().simple());
        let (conn, channel) = Tap::open(&cfg, &queue, binding, durable).await?;
        Ok(Tap { conn, channel, queue, durable, cfg, seen: std::sync::Mutex::new(Vec::new()) })
    }

    async fn open(
        cfg: &hyperfleet_common::broker::BrokerConfig,
        queue: &str,
        binding: &str,
        durable: bool,
    ) -> Result<(lapin::Connection, lapin::Channel)> {
        let conn = cfg.connect("hyperfleet-test-tap").await?;
        let channel = conn.create_channel().await?;
        cfg.declare_exchange(&channel).await?;
        let opts = lapin::options::QueueDeclareOptions {
            durable,
            exclusive: !durable,
            auto_delete: !durable,
            ..Default::default()
        };
        channel.queue_declare(queue.into(), opts, Default::default()).await?;
        channel
            .queue_bind(
                queue.into(),
                cfg.exchange.as_str().into(),
                binding.into(),
                Default::default(),
                Default::default(),
            )
            .await?;
        Ok((conn, channel))
    }

    /// Connects again (after a broker restart) to the same durable queue.
    pub async fn reconnect(&mut self, binding: &str) -> Result<()> {
        let (conn, channel) = Tap::open(&self.cfg, &self.queue, binding, self.durable).await?;
        self.conn = conn;
        self.channel = channel;
        Ok(())
    }

    /// Everything received so far (CloudEvents as JSON), after fetching what is waiting.
    pub async fn events(&self) -> Result<Vec<serde_json::Value>> {
        let opts = lapin::options::BasicGetOptions { no_ack: true };
        let mut fresh = Vec::new();
        while let Some(msg) = self.channel.basic_get(self.queue.as_str().into(), opts).await? {
            fresh.push(serde_json::from_slice(&msg.delivery.data)?);
        }
        let mut seen = self.seen.lock().map_err(|_| anyhow::anyhow!("tap poisoned"))?;
        seen.extend(fresh);
        Ok(seen.clone())
    }

    /// How many events so far announce resource `id`.
    pub async fn count(&self, id: &str) -> Result<usize> {
        Ok(self.events().await?.iter().filter(|e| e["data"]["id"] == id).count())
    }

    pub async fn close(self) {
        if self.durable {
            let _ = self.channel.queue_delete(self.queue.as_str().into(), Default::default()).await;
        }
        let _ = self.conn.close(200, "done".into()).await;
    }
}
