//! The simulated app's accounts and how their presence changes over time.

use super::activity::{Activity, StepRates};
use crate::model::{PlatformStatus, State};
use rand::seq::IndexedRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Platforms that can be PushOnline.
pub const MOBILE: [&str; 3] = ["iPhone", "Android", "iPad"];
/// Platforms that cannot.
pub const DESKTOP: [&str; 3] = ["Web", "PC", "Mac"];

fn is_mobile(platform: &str) -> bool {
    MOBILE.contains(&platform)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Device {
    platform: String,
    status: State,
    /// When a PushOnline device went PushOnline (sim clock, ms).
    since: i64,
}

#[derive(Debug, Clone, Default)]
struct Account {
    devices: Vec<Device>,
    /// It changed visibly since a query last answered for it.
    unshown: bool,
}

/// A change the churn made, as a `State.StateChange` callback would announce it. Platforms are
/// the query's names; the callback sender translates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The account.
    pub user_id: String,
    /// Login, Logout or Disconnect.
    pub action: &'static str,
    /// Register, Unregister, LinkClose or TimeOut.
    pub reason: &'static str,
    /// The device's platform.
    pub platform: String,
    /// Devices a login pushed off (a multi-device kick).
    pub kicked: Vec<String>,
    /// The account as a query answers after the change, if the change is visible to one (a
    /// kick that leaves the same platforms online is not).
    pub visible: Option<AccountView>,
}

/// One account as the control API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The account.
    pub user_id: String,
    /// Its aggregate state.
    pub status: State,
    /// Its per-platform states.
    pub platforms: Vec<PlatformStatus>,
}

/// The simulated accounts, their connections and their churn.
#[derive(Debug)]
pub struct Population {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    accounts: Vec<Option<Account>>,
    /// Accounts that exist (the churn loop asks ten times a second).
    live: usize,
    /// How long PushOnline lasts before IM reports Offline: 7 days divided by time compression.
    push_online_ttl_ms: i64,
    /// Which accounts are hot, and their share of the churn.
    activity: Activity,
    /// Positions of the hot accounts and of the others.
    hot: Vec<usize>,
    cold: Vec<usize>,
}

impl Population {
    /// `size` accounts named `{prefix}{i}`, a share of them online at the start.
    pub fn new(
        prefix: &str,
        size: usize,
        online_share: f64,
        push_online_ttl_ms: i64,
        activity: Activity,
        rng: &mut impl Rng,
        now: i64,
    ) -> Self {
        let mut p = Population {
            ids: Vec::with_capacity(size),
            index: HashMap::with_capacity(size),
            accounts: Vec::with_capacity(size),
            live: 0,
            push_online_ttl_ms,
            activity,
            hot: Vec::new(),
            cold: Vec::with_capacity(size),
        };
        for i in 0..size {
            let mut account = Account::default();
            if rng.random_bool(online_share.clamp(0.0, 1.0)) {
                account.devices.push(random_login(rng, now));
            }
            p.insert(format!("{prefix}{i}"), account);
        }
        p
    }

    fn insert(&mut self, id: String, account: Account) -> usize {
        if let Some(&i) = self.index.get(&id) {
            if self.accounts[i].replace(account).is_none() {
                self.live += 1;
            }
            return i;
        }
        self.live += 1;
        let i = self.ids.len();
        match self.activity.is_hot(i) {
            true => self.hot.push(i),
            false => self.cold.push(i),
        }
        self.index.insert(id.clone(), i);
        self.ids.push(id);
        self.accounts.push(Some(account));
        i
    }

    /// How many accounts exist.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The account's state as IM would answer now, or None if it does not exist.
    pub fn view(&mut self, id: &str, now: i64) -> Option<AccountView> {
        let i = *self.index.get(id)?;
        self.view_at(i, id, now)
    }

    fn view_at(&mut self, i: usize, id: &str, now: i64) -> Option<AccountView> {
        let ttl = self.push_online_ttl_ms;
        let account = self.accounts[i].as_mut()?;
        // PushOnline expires into Offline after the TTL (7 days in the real service).
        account
            .devices
            .retain(|d| !(d.status == State::PushOnline && now - d.since >= ttl));
        Some(view_of(id, account))
    }

    /// The account's state as a query answers it (`view`), and whether it had changed since
    /// the last answer for it; `shown` says whether this answer reaches the poller.
    pub fn answer(&mut self, id: &str, now: i64, shown: bool) -> Option<(AccountView, bool)> {
        let i = *self.index.get(id)?;
        let view = self.view_at(i, id, now)?;
        let account = self.accounts[i].as_mut()?;
        let changed = shown && std::mem::take(&mut account.unshown);
        Some((view, changed))
    }

    /// Every account's view at `now`.
    pub fn all(&mut self, now: i64) -> Vec<AccountView> {
        let ids = self.ids.clone();
        ids.iter().filter_map(|id| self.view(id, now)).collect()
    }

    /// Sets an account's devices (creating the account). An empty list means Offline.
    pub fn set(&mut self, id: &str, platforms: &[PlatformStatus], now: i64) {
        let devices = platforms
            .iter()
            .filter(|p| p.status != State::Offline)
            .map(|p| Device {
                platform: p.platform.clone(),
                status: p.status,
                since: now,
            })
            .collect();
        self.insert(
            id.to_owned(),
            Account {
                devices,
                unshown: false,
            },
        );
    }

    /// The account stops existing (IM answers 70107 for it).
    pub fn delete(&mut self, id: &str) -> bool {
        match self.index.get(id) {
            Some(&i) => {
                let existed = self.accounts[i].take().is_some();
                self.live -= usize::from(existed);
                existed
            }
            None => false,
        }
    }

    /// The mean step rates of hot and cold accounts while the population takes
    /// `steps_per_second`, and the hot accounts' ids.
    pub fn step_rates(&self, steps_per_second: f64) -> (StepRates, Vec<String>) {
        let rates = StepRates::of(
            &self.activity,
            steps_per_second,
            self.hot.len(),
            self.cold.len(),
        );
        let hot = self.hot.iter().map(|&i| self.ids[i].clone()).collect();
        (rates, hot)
    }

    /// Applies `count` random logins, logouts, app kills, resumes and multi-device kicks;
    /// returns what a callback would announce of each.
    pub fn churn(&mut self, count: usize, rng: &mut impl Rng, now: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.ids.is_empty() {
            return changes;
        }
        let to_hot = self.activity.hot_chance(self.hot.len(), self.cold.len());
        for _ in 0..count {
            let kind = match rng.random_bool(to_hot) {
                true => &self.hot,
                false => &self.cold,
            };
            let i = kind[rng.random_range(0..kind.len())];
            let Some(account) = self.accounts[i].as_mut() else {
                continue;
            };
            let before = view_of(&self.ids[i], account);
            if let Some((action, reason, platform, kicked)) = step(account, rng, now) {
                let after = view_of(&self.ids[i], account);
                account.unshown |= after != before;
                changes.push(Change {
                    user_id: self.ids[i].clone(),
                    action,
                    reason,
                    platform,
                    kicked,
                    visible: (after != before).then_some(after),
                });
            }
        }
        changes
    }
}

fn view_of(id: &str, account: &Account) -> AccountView {
    let status = if account.devices.iter().any(|d| d.status == State::Online) {
        State::Online
    } else if account
        .devices
        .iter()
        .any(|d| d.status == State::PushOnline)
    {
        State::PushOnline
    } else {
        State::Offline
    };
    AccountView {
        user_id: id.to_owned(),
        status,
        platforms: account
            .devices
            .iter()
            .map(|d| PlatformStatus {
                platform: d.platform.clone(),
                status: d.status,
            })
            .collect(),
    }
}

fn random_login(rng: &mut impl Rng, now: i64) -> Device {
    let platform = if rng.random_bool(0.6) {
        MOBILE.choose(rng)
    } else {
        DESKTOP.choose(rng)
    };
    Device {
        platform: platform.expect("non-empty").to_string(),
        status: State::Online,
        since: now,
    }
}

/// What one step announces: (action, reason, platform, kicked platforms).
type Announced = (&'static str, &'static str, String, Vec<String>);

fn step(account: &mut Account, rng: &mut impl Rng, now: i64) -> Option<Announced> {
    if account.devices.is_empty() {
        let login = random_login(rng, now);
        let platform = login.platform.clone();
        account.devices.push(login);
        return Some(("Login", "Register", platform, vec![]));
    }
    let roll: f64 = rng.random();
    let pick = rng.random_range(0..account.devices.len());
    let device = &mut account.devices[pick];
    let platform = device.platform.clone();
    match (device.status, roll) {
        // The app is killed or loses its network: mobile devices keep push delivery, and IM
        // notices when the heartbeat times out.
        (State::Online, r) if r < 0.35 && is_mobile(&device.platform) => {
            device.status = State::PushOnline;
            device.since = now;
            Some(("Disconnect", "TimeOut", platform, vec![]))
        }
        (State::Online, r) if r < 0.75 => {
            account.devices.remove(pick);
            match r < 0.55 {
                true => Some(("Logout", "Unregister", platform, vec![])),
                false => Some(("Disconnect", "LinkClose", platform, vec![])),
            }
        }
        (State::PushOnline, r) if r < 0.6 => {
            device.status = State::Online;
            device.since = now;
            Some(("Login", "Register", platform, vec![]))
        }
        (State::PushOnline, _) => {
            account.devices.remove(pick);
            Some(("Logout", "Unregister", platform, vec![]))
        }
        _ => {
            let login = random_login(rng, now);
            let platform = login.platform.clone();
            match account
                .devices
                .iter()
                .position(|d| d.platform == login.platform)
            {
                // A second device of the same platform pushes the first off: still Online.
                Some(i) => {
                    account.devices[i] = login;
                    Some(("Login", "Register", platform.clone(), vec![platform]))
                }
                None => {
                    account.devices.push(login);
                    Some(("Login", "Register", platform, vec![]))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_online_expires_to_offline() {
        let mut rng = rand::rng();
        let mut p = Population::new("u", 0, 0.0, 1_000, Activity::default(), &mut rng, 0);
        p.set(
            "a",
            &[PlatformStatus {
                platform: "iPhone".into(),
                status: State::PushOnline,
            }],
            0,
        );
        assert_eq!(p.view("a", 999).unwrap().status, State::PushOnline);
        assert_eq!(p.view("a", 1_000).unwrap().status, State::Offline);
    }

    #[test]
    fn churn_changes_states_and_deleted_accounts_vanish() {
        let mut rng = rand::rng();
        let mut p = Population::new("u", 1_000, 0.3, i64::MAX, Activity::default(), &mut rng, 0);
        let before = p.all(0);
        p.churn(5_000, &mut rng, 1);
        let after = p.all(1);
        assert!(before.iter().zip(&after).filter(|(a, b)| a != b).count() > 100);
        assert!(p.delete("u5"));
        assert!(p.view("u5", 2).is_none());
        assert_eq!(p.len(), 999);
        assert!(!p.delete("u5"));
        p.set("u5", &[], 3);
        p.set("new", &[], 3);
        assert_eq!(p.len(), 1_001);
    }

    #[test]
    fn an_account_is_shown_once_after_each_visible_change() {
        let mut rng = rand::rng();
        let mut p = Population::new("u", 100, 0.3, i64::MAX, Activity::default(), &mut rng, 0);
        assert!(
            (0..100).all(|i| !p.answer(&format!("u{i}"), 1, true).unwrap().1),
            "nothing changed yet"
        );
        let changes = p.churn(50, &mut rng, 1);
        let changed: std::collections::HashSet<&str> = changes
            .iter()
            .filter(|c| c.visible.is_some())
            .map(|c| c.user_id.as_str())
            .collect();
        assert!(!changed.is_empty());
        for i in 0..100 {
            let id = format!("u{i}");
            let shown = |p: &mut Population| p.answer(&id, 2, true).unwrap().1;
            assert_eq!(shown(&mut p), changed.contains(id.as_str()), "{id}");
            assert!(!shown(&mut p), "{id} shown twice");
        }
        assert!(p.answer("nobody", 2, true).is_none());
        // An answer that does not reach the poller (a truncated body) leaves the change to be
        // shown by the next one.
        let later = p.churn(50, &mut rng, 3);
        let id = &later.iter().find(|c| c.visible.is_some()).unwrap().user_id;
        assert!(!p.answer(id, 3, false).unwrap().1);
        assert!(p.answer(id, 3, true).unwrap().1);
    }

    #[test]
    fn hot_accounts_take_their_share_of_the_steps() {
        let mut rng = rand::rng();
        let activity = Activity {
            hot_share: 0.1,
            hot_step_share: 0.9,
            ..Activity::default()
        };
        let mut p = Population::new("u", 10_000, 0.3, i64::MAX, activity, &mut rng, 0);
        let (rates, hot) = p.step_rates(1_000.0);
        assert_eq!(rates.hot_accounts + rates.cold_accounts, 10_000);
        assert!((900..1_100).contains(&hot.len()), "{} hot", hot.len());
        let hot: std::collections::HashSet<String> = hot.into_iter().collect();
        let changes = p.churn(20_000, &mut rng, 1);
        let to_hot = changes.iter().filter(|c| hot.contains(&c.user_id)).count();
        let share = to_hot as f64 / changes.len() as f64;
        assert!(
            (0.85..0.95).contains(&share),
            "{share} of the changes went to hot accounts"
        );
    }
}
