//! Fetching and caching each issuer's JWKS. The rules (freshness, refetch interval, keeping keys while the
//! provider is down) are the engine's [`IssuerKeys`]; this module performs the fetches, one at a time per
//! issuer: requests that need keys while a fetch is under way wait for it and share its result.

use crate::client::{HttpClient, get};
use gatehouse_engine::KeySet;
use gatehouse_engine::config::Issuer;
use gatehouse_engine::jwks::{IssuerKeys, KeyFetch, KeyStep, Want};
use std::sync::Mutex;
use std::time::Duration;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

struct Slot {
    spec: Issuer,
    state: Mutex<IssuerKeys>,
    jwks_uri: Mutex<Option<String>>,
    flight: tokio::sync::Mutex<()>,
}

/// The key sets of all configured issuers.
pub struct KeyStore {
    slots: Vec<Slot>,
    client: HttpClient,
}

/// Milliseconds since the Unix epoch: the unit of [`IssuerKeys`]' fetch times.
fn unix_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl KeyStore {
    /// A store for `issuers` (in configuration order).
    pub fn new(issuers: impl IntoIterator<Item = Issuer>, client: HttpClient) -> KeyStore {
        let slots = issuers
            .into_iter()
            .map(|spec| Slot {
                jwks_uri: Mutex::new(spec.jwks_uri.clone()),
                spec,
                state: Mutex::new(IssuerKeys::default()),
                flight: tokio::sync::Mutex::new(()),
            })
            .collect();
        KeyStore { slots, client }
    }

    /// Keys of issuer `index`: cached, or fetched now (once for all waiting requests). `refresh` means a
    /// token named an unknown key. `None` when no keys were ever obtained.
    pub async fn keys(&self, index: usize, want: Want) -> Option<KeySet> {
        let slot = self.slots.get(index)?;
        let interval = slot.spec.jwks_refresh_interval_secs;
        let attempts_seen = {
            let st = slot.state.lock().ok()?;
            if !st.should_fetch(unix_now_ms(), want, interval) {
                return key_set(&st);
            }
            st.attempts()
        };
        let _flight = slot.flight.lock().await;
        {
            // Someone else fetched while this request waited: use their result.
            let st = slot.state.lock().ok()?;
            if st.attempts() != attempts_seen {
                return key_set(&st);
            }
        }
        let outcome = self.fetch(slot).await;
        let mut st = slot.state.lock().ok()?;
        match outcome {
            Ok((jwks, cc)) => st.record(unix_now_ms(), Ok((jwks, cc.as_deref())), slot.spec.jwks_max_age_secs),
            Err(e) => {
                crate::log(format_args!("fetching keys of `{}` failed: {e}", slot.spec.issuer));
                st.record(unix_now_ms(), Err(e), slot.spec.jwks_max_age_secs);
            }
        }
        key_set(&st)
    }

    async fn fetch(&self, slot: &Slot) -> Result<(serde_json::Value, Option<String>), String> {
        let known = slot.jwks_uri.lock().map_err(|e| e.to_string())?.clone();
        let mut fetch = KeyFetch::new(&slot.spec, known);
        let mut step = fetch.start();
        loop {
            step = match step {
                KeyStep::Get(url) => match get(&self.client, &url, FETCH_TIMEOUT).await {
                    Ok(f) => fetch.next(Ok((f.status, f.cache_control, &f.body))),
                    Err(e) => fetch.next(Err(e)),
                },
                KeyStep::Done { outcome, jwks_uri } => {
                    if let (Some(uri), Ok(mut known)) = (jwks_uri, slot.jwks_uri.lock()) {
                        *known = Some(uri);
                    }
                    return outcome;
                }
            };
        }
    }
}

fn key_set(st: &IssuerKeys) -> Option<KeySet> {
    st.current().map(|jwks| KeySet { jwks, version: st.version() })
}
