//! The country of a source address, from a MaxMind-format database (GeoIP2/GeoLite2 Country
//! or City), for the risk engine's "country outside the allowed ones" signal.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// An opened database; part of the configuration snapshot, reloaded when the file changes.
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
    pub path: PathBuf,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp").field("path", &self.path).finish()
    }
}

impl GeoIp {
    pub fn open(path: &Path) -> Result<Self, String> {
        let reader = maxminddb::Reader::open_readfile(path)
            .map_err(|e| format!("{}: not a MaxMind database: {e}", path.display()))?;
        Ok(Self {
            reader,
            path: path.to_path_buf(),
        })
    }

    /// The ISO 3166 country code of `ip`, when the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        let result = self.reader.lookup(ip).ok()?;
        let code: Option<&str> = result
            .decode_path(&maxminddb::path!["country", "iso_code"])
            .ok()?;
        code.map(str::to_ascii_uppercase)
    }
}
