//! The poll: every matching resource from the API, page by page.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use hyperfleet_common::api_client::{ApiClient, Failure, Page};

use crate::{Error, Resource, SentinelConfig, note_refusal};

/// The fields of [`Resource`], which is all a list page needs to carry.
const LIST_FIELDS: &str = "id,kind,href,generation,owner_references,created_time,status";

/// Set once the API refused `fields=traceparent` (an API from before tracing, e.g. mid-upgrade):
/// the sentinel stops asking for it and announces without the API's trace context.
static NO_TRACEPARENT: AtomicBool = AtomicBool::new(false);

/// [`LIST_FIELDS`], and the resource's trace context when this sentinel traces.
fn list_fields() -> String {
    if hyperfleet_common::telemetry::enabled() && !NO_TRACEPARENT.load(Ordering::Relaxed) {
        format!("{LIST_FIELDS},traceparent")
    } else {
        LIST_FIELDS.to_string()
    }
}

/// Every matching resource, page by page in `id` order, each page starting after the last id of
/// the one before (keyset paging: every page costs the same however deep the list, where `page=N`
/// would make the database skip N × size rows). Each page is retried (500 ms doubling to 8 s,
/// ±10 % jitter, 30 s in all) on network errors, timeouts, 5xx, 408 and 429. Other 4xx fail at
/// once. A pass holds one page at a time, so its memory does not grow with the fleet.
pub struct Pages {
    size: usize,
    selector: Option<String>,
    after: Option<String>,
    done: bool,
    /// The change-feed position of the first page: the feed resumes from there, so a change
    /// committed after the list is never missed by both.
    pub version: Option<String>,
}

impl Pages {
    pub fn new(cfg: &SentinelConfig) -> Self {
        let size = cfg.hyperfleet_api.page_size as usize;
        Pages { size, selector: cfg.search(), after: None, done: false, version: None }
    }

    /// The next page; `None` once the list is done.
    pub async fn next(&mut self, api: &ApiClient, cfg: &SentinelConfig) -> Result<Option<Vec<Resource>>, Error> {
        if self.done {
            return Ok(None);
        }
        // Only what the decision and the event use: a resource's spec can be 64 KiB, a page 100 of them.
        // No `total`: keyset paging does not need the count, which is most of a page's cost.
        let mut query = vec![
            ("size", self.size.to_string()),
            ("order", "id asc".to_string()),
            ("fields", list_fields()),
            ("total", "false".to_string()),
        ];
        if let Some(s) = page_search(self.selector.as_deref(), self.after.as_deref()) {
            query.push(("search", s));
        }
        let body = fetch_page(api, cfg, &query).await?;
        self.version = self.version.take().or(body.version);
        let got = body.items.len();
        let items: Vec<Resource> = body.items.into_iter().filter(|r| !r.id.is_empty()).collect();
        match items.last() {
            Some(last) if got == self.size && self.after.as_deref() != Some(last.id.as_str()) => {
                self.after = Some(last.id.clone())
            }
            _ => self.done = true,
        }
        Ok(Some(items))
    }
}

/// The `search` of one page: the resource selector, and the keyset condition after the first page.
fn page_search(selector: Option<&str>, after: Option<&str>) -> Option<String> {
    // Ids come from the API (UUIDs); quotes are doubled anyway, as the search language escapes them.
    let after = after.map(|id| format!("id > '{}'", id.replace('\'', "''")));
    match (selector, after) {
        (Some(s), Some(a)) => Some(format!("({s}) and {a}")),
        (s, a) => a.or(s.map(String::from)),
    }
}

async fn fetch_page(api: &ApiClient, cfg: &SentinelConfig, query: &[(&str, String)]) -> Result<Page<Resource>, Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut backoff = Duration::from_millis(500);
    let mut query = query.to_vec();
    loop {
        // The token is read per request: a rotated token file is picked up by the next page.
        let message = match api.list_page::<Resource>(&cfg.resource_type, &query).await {
            Ok(page) => return Ok(page),
            Err(e)
                if e.failure == Failure::Status(400)
                    && query.iter().any(|(k, v)| *k == "fields" && v.contains("traceparent")) =>
            {
                NO_TRACEPARENT.store(true, Ordering::Relaxed);
                tracing::warn!(
                    "the API does not know the list field traceparent (it predates tracing): announcing without the API's trace context"
                );
                for (k, v) in &mut query {
                    if *k == "fields" {
                        *v = LIST_FIELDS.to_string();
                    }
                }
                continue;
            }
            Err(e) if e.is_refused() => {
                note_refusal(api, cfg, "list", &e);
                return Err(Error::Api { message: e.message, auth: true });
            }
            // An unreadable body is retried like an error status.
            Err(e) if e.is_retryable() || e.failure == Failure::Body => e.message,
            Err(e) => return Err(Error::Api { message: e.message, auth: false }),
        };
        let wait = hyperfleet_common::process::jitter(backoff);
        if Instant::now() + wait > deadline {
            return Err(Error::Api { message, auth: false });
        }
        tracing::debug!(%message, ?wait, "list request failed; retrying");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_after_the_first_start_after_the_last_id() {
        assert_eq!(page_search(None, None), None);
        assert_eq!(page_search(Some("labels.a = 'b'"), None).as_deref(), Some("labels.a = 'b'"));
        assert_eq!(page_search(None, Some("x")).as_deref(), Some("id > 'x'"));
        assert_eq!(
            page_search(Some("labels.a = 'b' and labels.c = 'd'"), Some("x")).as_deref(),
            Some("(labels.a = 'b' and labels.c = 'd') and id > 'x'")
        );
    }
}
