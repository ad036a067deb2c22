//! UserSig (TLSSigAPIv2): HMAC-SHA256 over a fixed text, wrapped in JSON, zlib and a URL-safe
//! Base64 variant. Generation for the client, verification for the simulator.

use crate::secret::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{Read, Write};

type HmacSha256 = Hmac<Sha256>;

/// Why a UserSig does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigError {
    /// No UserSig at all.
    #[error("UserSig is empty")]
    Empty,
    /// Not base64url, zlib or the expected JSON.
    #[error("UserSig is not valid base64, zlib or JSON")]
    Malformed,
    /// Past its time plus expiry.
    #[error("UserSig expired")]
    Expired,
    /// The HMAC does not match the key.
    #[error("UserSig HMAC does not match the key")]
    BadHmac,
    /// Made for another identifier.
    #[error("UserSig identifier does not match the request")]
    IdentifierMismatch,
    /// Made for another SDKAppID.
    #[error("UserSig sdkappid does not match the request")]
    SdkAppIdMismatch,
}

/// The fields of a decoded signature (the HMAC itself is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigClaims {
    /// The identifier it was made for.
    pub identifier: String,
    /// The SDKAppID it was made for.
    pub sdkappid: u64,
    /// When it was made (Unix seconds).
    pub time: i64,
    /// Seconds it stays valid after `time`.
    pub expire: i64,
}

/// Step 3 of the algorithm: standard padded Base64 of HMAC-SHA256(key, content).
pub fn hmac_base64(
    key: &Secret,
    identifier: &str,
    sdkappid: u64,
    time: i64,
    expire: i64,
) -> String {
    let content = format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    );
    let mut mac =
        HmacSha256::new_from_slice(key.expose().as_bytes()).expect("HMAC takes keys of any length");
    mac.update(content.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Generates a UserSig valid for `expire` seconds from `time` (Unix seconds).
pub fn generate(key: &Secret, identifier: &str, sdkappid: u64, time: i64, expire: i64) -> Secret {
    let sig = hmac_base64(key, identifier, sdkappid, time, expire);
    let doc = serde_json::json!({
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdkappid,
        "TLS.expire": expire,
        "TLS.time": time,
        "TLS.sig": sig,
    });
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(doc.to_string().as_bytes())
        .expect("writing to a Vec cannot fail");
    let compressed = z.finish().expect("writing to a Vec cannot fail");
    Secret::new(escape(&STANDARD.encode(compressed)))
}

fn escape(b64: &str) -> String {
    b64.chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect()
}

fn unescape(sig: &str) -> String {
    sig.chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect()
}

/// Reverses steps 6 and 5 and reads the fields; checks nothing.
pub fn decode(sig: &str) -> Result<(SigClaims, String), SigError> {
    if sig.is_empty() {
        return Err(SigError::Empty);
    }
    let compressed = STANDARD
        .decode(unescape(sig))
        .map_err(|_| SigError::Malformed)?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(&compressed[..])
        .take(64 * 1024)
        .read_to_end(&mut json)
        .map_err(|_| SigError::Malformed)?;
    let doc: serde_json::Value = serde_json::from_slice(&json).map_err(|_| SigError::Malformed)?;
    let field_i64 = |name: &str| -> Result<i64, SigError> {
        match &doc[name] {
            serde_json::Value::Number(n) => n.as_i64().ok_or(SigError::Malformed),
            // Some libraries write the numbers as strings.
            serde_json::Value::String(s) => s.parse().map_err(|_| SigError::Malformed),
            _ => Err(SigError::Malformed),
        }
    };
    let identifier = doc["TLS.identifier"]
        .as_str()
        .ok_or(SigError::Malformed)?
        .to_owned();
    let claims = SigClaims {
        identifier,
        sdkappid: u64::try_from(field_i64("TLS.sdkappid")?).map_err(|_| SigError::Malformed)?,
        time: field_i64("TLS.time")?,
        expire: field_i64("TLS.expire")?,
    };
    let hmac = doc["TLS.sig"]
        .as_str()
        .ok_or(SigError::Malformed)?
        .to_owned();
    Ok((claims, hmac))
}

/// Full verification as IM does it: decode, check sdkappid and identifier, expiry, then the HMAC.
pub fn verify(
    sig: &str,
    key: &Secret,
    sdkappid: u64,
    identifier: &str,
    now: i64,
) -> Result<SigClaims, SigError> {
    let (claims, hmac) = decode(sig)?;
    if claims.sdkappid != sdkappid {
        return Err(SigError::SdkAppIdMismatch);
    }
    if claims.identifier != identifier {
        return Err(SigError::IdentifierMismatch);
    }
    let expected = hmac_base64(
        key,
        &claims.identifier,
        claims.sdkappid,
        claims.time,
        claims.expire,
    );
    if expected != hmac {
        return Err(SigError::BadHmac);
    }
    // Both come from the request: a sum past i64 is no validity, it is expired.
    if claims
        .time
        .checked_add(claims.expire)
        .is_none_or(|until| now > until)
    {
        return Err(SigError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_numbers_in_a_usersig_are_rejected_not_overflowed() {
        let key = Secret::new("k");
        let sig = generate(&key, "admin", 1, i64::MAX, i64::MAX);
        assert!(matches!(
            verify(sig.expose(), &key, 1, "admin", 0),
            Err(SigError::Expired)
        ));
        let json = r#"{"TLS.ver":"2.0","TLS.identifier":"a","TLS.sdkappid":-1,"TLS.time":1,"TLS.expire":1,"TLS.sig":"x"}"#;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, json.as_bytes()).unwrap();
        let b64 = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            z.finish().unwrap(),
        )
        .replace('+', "*")
        .replace('/', "-")
        .replace('=', "_");
        assert!(matches!(decode(&b64), Err(SigError::Malformed)));
    }

    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

    #[test]
    fn hmac_matches_the_published_value() {
        let key = Secret::new(KEY);
        assert_eq!(
            hmac_base64(&key, "0", 1_400_000_000, 1_569_910_200, 15_552_000),
            "CpjuBdQs9ZwnuGAJR8onoOeI9fweX2vIMMY94iOJWJY="
        );
    }

    #[test]
    fn generate_decode_verify_round_trip() {
        let key = Secret::new(KEY);
        let sig = generate(&key, "administrator", 1_400_000_001, 1_700_000_000, 86_400);
        assert!(!sig.expose().contains(['+', '/', '=']));
        let (claims, _) = decode(sig.expose()).unwrap();
        assert_eq!(claims.identifier, "administrator");
        assert_eq!(claims.expire, 86_400);
        let ok = verify(
            sig.expose(),
            &key,
            1_400_000_001,
            "administrator",
            1_700_000_100,
        );
        assert_eq!(ok.unwrap().time, 1_700_000_000);
    }

    #[test]
    fn verify_rejects_each_fault() {
        let key = Secret::new(KEY);
        let sig = generate(&key, "admin", 1, 1_700_000_000, 100);
        let s = sig.expose();
        assert_eq!(
            verify(s, &key, 1, "admin", 1_700_000_101),
            Err(SigError::Expired)
        );
        assert_eq!(
            verify(s, &key, 2, "admin", 1_700_000_001),
            Err(SigError::SdkAppIdMismatch)
        );
        assert_eq!(
            verify(s, &key, 1, "other", 1_700_000_001),
            Err(SigError::IdentifierMismatch)
        );
        let wrong = Secret::new("another key");
        assert_eq!(
            verify(s, &wrong, 1, "admin", 1_700_000_001),
            Err(SigError::BadHmac)
        );
        assert_eq!(verify("", &key, 1, "admin", 0), Err(SigError::Empty));
        assert_eq!(verify("!!!", &key, 1, "admin", 0), Err(SigError::Malformed));
        assert_eq!(
            verify("eJw_", &key, 1, "admin", 0),
            Err(SigError::Malformed)
        );
    }
}
