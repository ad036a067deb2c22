//! Everything about Tencent IM: UserSig, wire format, error codes, pacing and the client.

pub mod client;
pub(crate) mod codes;
pub mod config;
pub mod lease;
pub mod ratelimit;
pub mod usersig;
pub mod wire;

pub use client::{BatchAnswer, ClientSettings, ImClient, QueryError};
pub use codes::ErrorClass;
pub use lease::CallLease;
pub use wire::{AccountFailure, AccountOutcome};

/// Region names accepted by `im.region`, in the reference's order.
pub const REGIONS: [&str; 8] = [
    "china",
    "singapore",
    "seoul",
    "tokyo",
    "frankfurt",
    "mumbai",
    "silicon-valley",
    "jakarta",
];

/// The API host of a region, or its backup host.
pub fn region_host(region: &str, backup: bool) -> Option<&'static str> {
    let (main, spare) = match region {
        "china" => ("console.tim.qq.com", "adminapi.my-imcloud.com"),
        "singapore" => ("adminapisgp.im.qcloud.com", "adminapisgp.my-imcloud.com"),
        "seoul" => ("adminapikr.im.qcloud.com", "adminapikr.my-imcloud.com"),
        "tokyo" => ("adminapijpn.im.qcloud.com", "adminapijpn.my-imcloud.com"),
        "frankfurt" => ("adminapiger.im.qcloud.com", "adminapiger.my-imcloud.com"),
        "mumbai" => ("adminapiind.im.qcloud.com", "adminapiind.my-imcloud.com"),
        "silicon-valley" => ("adminapiusa.im.qcloud.com", "adminapiusa.my-imcloud.com"),
        "jakarta" => ("adminapiidn.im.qcloud.com", "adminapiidn.my-imcloud.com"),
        _ => return None,
    };
    Some(if backup { spare } else { main })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_region_has_both_hosts() {
        for r in super::REGIONS {
            assert!(super::region_host(r, false).is_some(), "{r}");
            assert!(
                super::region_host(r, true)
                    .unwrap()
                    .ends_with("my-imcloud.com"),
                "{r}"
            );
        }
        assert_eq!(super::region_host("atlantis", false), None);
    }
}
