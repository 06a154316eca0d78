//! Reading the body of an HTTP answer from a server connmon does not control — an alert receiver,
//! the managed identity token endpoint: at most a bounded prefix, so a receiver that answers with
//! an endless or huge body costs [`PREFIX`] of memory and no time, instead of buffering it all
//! until the request timeout (and, under a memory limit, aborting the process).

/// How much of an answer is read: plenty for a status word, an error message or a token.
pub const PREFIX: usize = 64 * 1024;

/// The first `limit` bytes of `resp`'s body (all of it when shorter), read chunk by chunk. Reading
/// stops at `limit`; dropping the rest of the response then closes its connection rather than
/// returning it to the pool, so nothing further is read.
pub async fn prefix(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(chunk) = resp.chunk().await? else {
            break;
        };
        let room = limit - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(out)
}
