//! The bearer token a worker (sentinel, adapter) sends to the API, read from a file
//! (`hyperfleet_api.token_file`) — typically a projected Kubernetes ServiceAccount token.
//!
//! The kubelet rotates projected tokens by swapping a symlink atomically, so [`TokenFile`] looks
//! at the metadata of the file the path resolves to (device, inode, size, modification time) on
//! every use and reads it again when any of that changed; after the API refused the token
//! ([`ApiCredentials::refused`]) it reads it again at the next use whatever the metadata says.
//! Those reads go through `tokio::fs`, so a slow volume never stalls the runtime's threads.
//! Surrounding whitespace is trimmed; a missing, unreadable or empty file is an error naming the
//! path. The token itself is never shown: `Debug` prints `<redacted>`, errors name only the path,
//! and the header value is marked sensitive.
//!
//! [`ApiCredentials`] adds what every API client needs around it: no header at all when no file is
//! configured, and a memory of refusals so that a 401/403 is logged once per streak (again only
//! after an accepted request in between), not once per request.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::SystemTime,
};

use tokio::sync::Mutex;

use axum::http::HeaderValue;

/// Why the token file cannot be used. Names the path, never the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token file {}: {problem}", path.display())]
pub struct TokenError {
    pub path: PathBuf,
    pub problem: String,
}

impl TokenError {
    fn new(path: &Path, problem: impl Into<String>) -> Self {
        TokenError { path: path.to_path_buf(), problem: problem.into() }
    }
}

/// What identifies one version of the file: a rotation changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    device: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Result<Self, TokenError> {
        Stamp::from_metadata(path, std::fs::metadata(path))
    }

    async fn read(path: &Path) -> Result<Self, TokenError> {
        Stamp::from_metadata(path, tokio::fs::metadata(path).await)
    }

    // `metadata` follows symlinks: this is the file the kubelet's `..data` link points at now.
    fn from_metadata(path: &Path, meta: std::io::Result<std::fs::Metadata>) -> Result<Self, TokenError> {
        let meta = meta.map_err(|e| TokenError::new(path, format!("cannot read it: {e}")))?;
        if !meta.is_file() {
            return Err(TokenError::new(path, "not a regular file"));
        }
        #[cfg(unix)]
        let (device, inode) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (device, inode) = (0, 0);
        Ok(Stamp { len: meta.len(), modified: meta.modified().ok(), device, inode })
    }
}

struct Cached {
    stamp: Stamp,
    header: HeaderValue,
    /// Read the file again at the next use, whatever its metadata says.
    stale: bool,
}

/// A bearer token kept in a file, re-read when the file changes.
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Cached>,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile").field("path", &self.path).field("token", &format_args!("<redacted>")).finish()
    }
}

/// `path`'s content as an `Authorization` header value (`Bearer <token>`, marked sensitive).
fn header_from(path: &Path, raw: std::io::Result<Vec<u8>>) -> Result<HeaderValue, TokenError> {
    let raw = raw.map_err(|e| TokenError::new(path, format!("cannot read it: {e}")))?;
    let text = String::from_utf8(raw).map_err(|_| TokenError::new(path, "not UTF-8 text"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::new(path, "the file is empty"));
    }
    if token.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(TokenError::new(path, "the token holds characters that cannot be sent in an HTTP header"));
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| TokenError::new(path, "the token cannot be sent in an HTTP header"))?;
    header.set_sensitive(true);
    Ok(header)
}

impl TokenFile {
    /// Reads the token at once: a missing, unreadable or empty file is an error (for start-up).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, TokenError> {
        let path = path.into();
        let stamp = Stamp::of(&path)?;
        let header = header_from(&path, std::fs::read(&path))?;
        Ok(TokenFile { path, cached: Mutex::new(Cached { stamp, header, stale: false }) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `Authorization` header value (`Bearer <token>`), read again first when the file changed
    /// or the API refused the last one. An error when the file is gone, unreadable or empty now.
    pub async fn header(&self) -> Result<HeaderValue, TokenError> {
        let mut cached = self.cached.lock().await;
        // Metadata before content: a change in between makes the next stamp differ, so the newer
        // file is read then; the other order could keep an old token under a new stamp.
        let stamp = Stamp::read(&self.path).await?;
        if cached.stale || cached.stamp != stamp {
            let header = header_from(&self.path, tokio::fs::read(&self.path).await)?;
            *cached = Cached { stamp, header, stale: false };
        }
        Ok(cached.header.clone())
    }

    /// Makes the next [`TokenFile::header`] read the file again (after the API refused the token).
    pub async fn reload(&self) {
        self.cached.lock().await.stale = true;
    }
}

/// An API client's credentials: the token file, if one is configured, and whether the API is
/// refusing them at the moment.
#[derive(Debug, Default)]
pub struct ApiCredentials {
    token: Option<TokenFile>,
    refusing: AtomicBool,
}

impl ApiCredentials {
    /// Credentials from `token_file`; none (no header sent) when it is unset or empty. The file is
    /// read at once, so a missing or empty one fails the start.
    pub fn from_file(token_file: Option<&Path>) -> Result<Self, TokenError> {
        Self::open(token_file)
    }

    /// [`ApiCredentials::from_file`] for a worker's `hyperfleet_api.token_file`, its error naming the key.
    pub fn from_config(token_file: Option<&Path>) -> Result<Self, String> {
        Self::open(token_file).map_err(|e| format!("hyperfleet_api.token_file: {e}"))
    }

    fn open(token_file: Option<&Path>) -> Result<Self, TokenError> {
        let token = token_file.filter(|p| !p.as_os_str().is_empty()).map(TokenFile::open).transpose()?;
        Ok(ApiCredentials { token, refusing: AtomicBool::new(false) })
    }

    /// Whether a token file is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The token file's path, if one is configured.
    pub fn token_path(&self) -> Option<&Path> {
        self.token.as_ref().map(TokenFile::path)
    }

    /// The `Authorization` header value to send, `None` without a token file.
    pub async fn authorization(&self) -> Result<Option<HeaderValue>, TokenError> {
        match &self.token {
            Some(t) => t.header().await.map(Some),
            None => Ok(None),
        }
    }

    /// Records a 401 or 403 from the API: the token file is read again at the next use. `true`
    /// when this is the first refusal since the last accepted request — the one worth a warning.
    pub async fn refused(&self) -> bool {
        if let Some(t) = &self.token {
            t.reload().await;
        }
        !self.refusing.swap(true, Ordering::Relaxed)
    }

    /// Records a request the API accepted; `true` when it ends a streak of refusals.
    pub fn accepted(&self) -> bool {
        self.refusing.swap(false, Ordering::Relaxed)
    }
}

/// What to say about an error response: the `detail` of an RFC 9457 problem+json body (else its
/// `title`, else the start of the body), at most 300 characters. The API's problem details never
/// carry the token.
pub fn problem_detail(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        parsed.as_ref().and_then(|v| v.get(name)).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(String::from)
    };
    let text = field("detail").or_else(|| field("title")).unwrap_or_else(|| body.trim().to_string());
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hf-token-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    fn bearer(h: &HeaderValue) -> &str {
        h.to_str().expect("ascii")
    }

    #[tokio::test]
    async fn the_token_is_trimmed_and_sent_as_a_sensitive_bearer_header() {
        let dir = scratch();
        let path = dir.join("token");
        std::fs::write(&path, "  abc.def-ghi_jkl \n").expect("write");
        let file = TokenFile::open(&path).expect("open");
        let header = file.header().await.expect("header");
        assert_eq!(bearer(&header), "Bearer abc.def-ghi_jkl");
        assert!(header.is_sensitive());
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn missing_empty_and_unsendable_files_are_errors_naming_the_path_only() {
        let dir = scratch();
        let missing = dir.join("missing");
        let e = TokenFile::open(&missing).expect_err("missing");
        assert!(e.to_string().contains(&missing.display().to_string()) && e.to_string().contains("cannot read"), "{e}");
        let empty = dir.join("empty");
        std::fs::write(&empty, " \n\t\n").expect("write");
        let e = TokenFile::open(&empty).expect_err("empty");
        assert_eq!(e.to_string(), format!("token file {}: the file is empty", empty.display()));
        let odd = dir.join("odd");
        std::fs::write(&odd, "se cret\n").expect("write");
        let e = TokenFile::open(&odd).expect_err("space inside");
        assert!(!e.to_string().contains("se cret") && e.to_string().contains("HTTP header"), "{e}");
        let e = TokenFile::open(&dir).expect_err("a directory");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // An empty path means "not configured".
        let none = ApiCredentials::from_file(Some(Path::new(""))).expect("empty path");
        assert!(!none.has_token() && none.authorization().await.expect("no header").is_none());
        assert!(ApiCredentials::from_file(Some(&empty)).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn debug_never_shows_the_token() {
        let dir = scratch();
        let path = dir.join("token");
        std::fs::write(&path, "hunter2-token").expect("write");
        let creds = ApiCredentials::from_file(Some(&path)).expect("open");
        let header = creds.authorization().await.expect("ok").expect("some");
        let shown = format!("{creds:?} {header:?} {:?}", TokenFile::open(&path).expect("open"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        std::fs::remove_dir_all(dir).ok();
    }

    /// The kubelet's layout: `token -> ..data/token`, `..data -> ..<timestamp>`; a rotation writes a
    /// new timestamped directory and renames a new `..data` link over the old one.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_rotation_by_symlink_swap_is_picked_up() {
        use std::os::unix::fs::symlink;
        let dir = scratch();
        std::fs::create_dir(dir.join("..v1")).expect("v1");
        std::fs::write(dir.join("..v1/token"), "first\n").expect("write");
        symlink("..v1", dir.join("..data")).expect("link");
        symlink("..data/token", dir.join("token")).expect("link");
        let file = TokenFile::open(dir.join("token")).expect("open");
        assert_eq!(bearer(&file.header().await.expect("h")), "Bearer first");
        assert_eq!(bearer(&file.header().await.expect("h")), "Bearer first");

        std::fs::create_dir(dir.join("..v2")).expect("v2");
        std::fs::write(dir.join("..v2/token"), "secnd\n").expect("write"); // same length
        symlink("..v2", dir.join("..data_tmp")).expect("link");
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap");
        std::fs::remove_dir_all(dir.join("..v1")).expect("old version gone");
        assert_eq!(bearer(&file.header().await.expect("h")), "Bearer secnd");
        std::fs::remove_dir_all(dir).ok();
    }

    async fn sent(c: &ApiCredentials) -> Option<String> {
        c.authorization().await.expect("ok").map(|h| bearer(&h).to_string())
    }

    #[tokio::test]
    async fn a_refusal_rereads_the_file_even_when_its_metadata_did_not_change() {
        let dir = scratch();
        let path = dir.join("token");
        std::fs::write(&path, "aaaa").expect("write");
        let creds = ApiCredentials::from_file(Some(&path)).expect("open");
        let before = std::fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
        // The same length, in place, with the old modification time put back: metadata unchanged.
        std::fs::write(&path, "bbbb").expect("rewrite");
        std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(before)).expect("mtime");
        assert_eq!(sent(&creds).await.as_deref(), Some("Bearer aaaa"), "cached while the file looks the same");
        assert!(creds.refused().await, "the first refusal is reported");
        assert_eq!(sent(&creds).await.as_deref(), Some("Bearer bbbb"), "read again after a refusal");
        assert!(!creds.refused().await, "a second refusal in a row is not");
        assert!(!creds.refused().await);
        assert!(creds.accepted(), "an accepted request ends the streak");
        assert!(!creds.accepted());
        assert!(creds.refused().await, "a refusal after a success is reported again");
        // A file that becomes empty is an error at the next use, naming the path only.
        std::fs::write(&path, "\n").expect("empty");
        let e = creds.authorization().await.expect_err("empty now");
        assert!(e.to_string().contains("is empty") && e.to_string().contains(&path.display().to_string()), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn without_a_file_no_header_is_sent_but_refusals_are_still_tracked() {
        let creds = ApiCredentials::from_file(None).expect("none");
        assert!(creds.authorization().await.expect("ok").is_none());
        assert!(creds.refused().await);
        assert!(!creds.refused().await);
    }

    #[test]
    fn the_detail_of_a_problem_is_what_is_reported() {
        let body =
            r#"{"type":"x","title":"Invalid Token","status":401,"detail":"token expired","code":"HYPERFLEET-AUT-002"}"#;
        assert_eq!(problem_detail(body), "token expired");
        assert_eq!(problem_detail(r#"{"title":"Authentication Required"}"#), "Authentication Required");
        assert_eq!(problem_detail(" plain text \n"), "plain text");
        assert_eq!(problem_detail(&"x".repeat(1000)).len(), 300);
    }
}
