//! Query parameters of the fake Clerk API, read as Clerk's OpenAPI spec defines them.

/// `a=1&b=x%2By&b=z` → pairs, decoded as `application/x-www-form-urlencoded` (`+` is a space).
pub(super) fn parse_query(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A request's query parameters.
pub(super) struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub(super) fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }
    pub(super) fn one(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub(super) fn all(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.trim_start_matches('+').to_owned())
            .collect()
    }
    /// `limit` (default 10, 1..=500) and `offset` (default 0), as the spec defines them.
    pub(super) fn paging(&self) -> Result<(usize, usize), &'static str> {
        let limit = match self.one("limit") {
            None => 10,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=500).contains(&n) => n as usize,
                _ => return Err("limit must be an integer between 1 and 500"),
            },
        };
        let offset = match self.one("offset") {
            None => 0,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= 0 => n as usize,
                _ => return Err("offset must be an integer greater or equal to zero"),
            },
        };
        Ok((limit, offset))
    }
    /// Ascending unless `-created_at` (or nothing, when `default_desc`).
    pub(super) fn ascending(&self, default_desc: bool) -> Result<bool, &'static str> {
        match self.one("order_by").map(str::trim) {
            None => Ok(!default_desc),
            Some("created_at" | "+created_at") => Ok(true),
            Some("-created_at") => Ok(false),
            Some(_) => Err("the fake Clerk API orders by created_at only"),
        }
    }
}
