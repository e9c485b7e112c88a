//! Answers tidegate reads from other servers (spool replay, the ACME `ask` endpoint): read to
//! their end without keeping them, and only so far. An endless or huge answer is an error,
//! never memory.

use http_body_util::BodyExt;

/// Read `body` to its end, keeping nothing; `Err` once it passes `cap` bytes. The bytes read.
pub async fn discard<B>(mut body: B, cap: u64) -> Result<u64, String>
where
    B: hyper::body::Body + Unpin,
    B::Error: std::fmt::Display,
{
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            seen = seen.saturating_add(hyper::body::Buf::remaining(data) as u64);
            if seen > cap {
                return Err(format!("the answer is longer than {cap} bytes"));
            }
        }
    }
    Ok(seen)
}
