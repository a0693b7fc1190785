//! Reading and changing tokens: `GetApiToken`, `ListApiTokens` (filter,
//! order, pages) and `UpdateApiToken` (the update mask and the rules of
//! each mutable field).

use super::limits::requested_limit;
use super::*;
use crate::index::{ListKey, PageRecords};

/// The mutable fields of a token, as named in an update mask
/// (`rate_limit`, the older form of `limit`, is taken as `limit`).
const UPDATABLE: [&str; 6] = [
    "display_name",
    "description",
    "labels",
    "expire_time",
    "role",
    "limit",
];

impl ApiTokenService {
    pub(super) async fn get(
        &self,
        request: Request<v1::GetApiTokenRequest>,
    ) -> Result<v1::ApiToken, Error> {
        let (_, name) = self
            .authorize_on_name(&request, "name", &request.get_ref().name, Role::Viewer)
            .await?;
        // From memory when the index holds it (the usual case); a token
        // created on another replica a moment ago may not be there yet.
        let index = self.auth.index();
        let record = match index.by_name(name.namespace().as_str(), name.token_id()) {
            Some(view) => index.record(&view).await?,
            None => Arc::new(self.store.get(&name).await?),
        };
        Ok(self.present(&record, self.clock.now()))
    }

    pub(super) async fn list(
        &self,
        request: Request<v1::ListApiTokensRequest>,
    ) -> Result<v1::ListApiTokensResponse, Error> {
        let (_, namespace) = self
            .authorize_on_parent(&request, &request.get_ref().parent, Role::Viewer)
            .await?;
        let request = request.into_inner();

        let mut violations = Violations::default();
        let page_size = page_size(&mut violations, request.page_size);
        let filter = violations.take(ListFilter::parse("filter", &request.filter))?;
        let query = QueryFingerprint::of(&request.parent, &request.filter, request.show_revoked);
        let before_id = if request.page_token.is_empty() {
            None
        } else {
            violations.take(page::decode(
                &self.keys,
                "page_token",
                query,
                &request.page_token,
            ))?
        };
        violations.finish()?;
        let filter = filter.unwrap_or_default();

        let now = self.clock.now();
        let include_revoked = request.show_revoked || filter.asks_for_revoked();
        // A page whose rows only change with the rows themselves is served
        // from the page cache while its namespace is unchanged.
        let index = self.auth.index();
        let cache = (!filter.depends_on_time()).then(|| {
            let key = ListKey {
                namespace: namespace.as_str().to_owned(),
                filter: request.filter.clone(),
                include_revoked,
                before_id,
                limit: page_size + 1,
            };
            // Read before the query: a change from now on moves it.
            let generation = index.generation(namespace.as_str());
            (key, generation)
        });
        let cached = cache
            .as_ref()
            .and_then(|(key, generation)| index.cached_page(key, *generation));
        let records: PageRecords<TokenRecord> = match cached {
            Some(records) => records,
            None => {
                let records: PageRecords<TokenRecord> = self
                    .store
                    .list(&ListQuery {
                        namespace: namespace.as_str().to_owned(),
                        filter,
                        include_revoked,
                        before_id,
                        limit: page_size + 1,
                        now,
                    })
                    .await?
                    .into_iter()
                    .map(Arc::new)
                    .collect::<Vec<_>>()
                    .into();
                if let Some((key, generation)) = cache {
                    index.cache_page(key, generation, Arc::clone(&records));
                }
                records
            }
        };
        let (page, next_page_token) = page_of(&records, page_size, |last| {
            page::encode(&self.keys, query, last.id)
        });
        Ok(v1::ListApiTokensResponse {
            api_tokens: page
                .iter()
                .map(|record| self.present(record, now))
                .collect(),
            next_page_token,
        })
    }

    pub(super) async fn update(
        &self,
        request: Request<v1::UpdateApiTokenRequest>,
    ) -> Result<v1::ApiToken, Error> {
        let context = self.auth.context(&request);
        let token = required("api_token", request.get_ref().api_token.as_ref())?.clone();
        let (caller, name) = self
            .authorize_on_name(&request, "api_token.name", &token.name, Role::Owner)
            .await?;
        let paths = update_paths(&token, request.get_ref().update_mask.as_ref())?;
        if token.etag.len() > MAX_ETAG_LEN {
            return Err(Error::invalid(
                "api_token.etag",
                format!("must be at most {MAX_ETAG_LEN} bytes: send back the etag the server gave"),
            ));
        }
        let now = self.clock.now();
        let mut entry = context.entry(
            name.namespace().as_str(),
            Action::Update,
            Actor::Token(&caller),
            name.to_string(),
            now,
        );
        entry.details.insert("fields".into(), paths.join(","));
        let max_limit = self.auth.limits().max_token_rate_limit;
        let record = self
            .store
            .update(
                &name,
                now,
                |current| changes_for(&token, &paths, current, &caller, now, max_limit),
                entry,
            )
            .await?;
        self.events.appended();
        info!(token = %record.name, fields = ?paths, actor = %caller.name, "token updated");
        Ok(self.present(&record, now))
    }
}

/// The fields an update touches: the mask's paths (`*` for all), or, with
/// no mask, every mutable field set in `token` (AIP-134).
fn update_paths(
    token: &v1::ApiToken,
    mask: Option<&prost_types::FieldMask>,
) -> Result<Vec<&'static str>, Error> {
    let paths: &[String] = mask.map_or(&[], |mask| mask.paths.as_slice());
    if paths.len() > MAX_MASK_PATHS {
        return Err(Error::invalid(
            "update_mask",
            format!("must have at most {MAX_MASK_PATHS} paths"),
        ));
    }
    if paths.is_empty() {
        let set = [
            !token.display_name.is_empty(),
            !token.description.is_empty(),
            !token.labels.is_empty(),
            token.expire_time.is_some(),
            token.role != 0,
            token.limit.is_some() || token.rate_limit != 0,
        ];
        let implied: Vec<_> = UPDATABLE
            .into_iter()
            .zip(set)
            .filter(|(_, set)| *set)
            .map(|(path, _)| path)
            .collect();
        if implied.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                "is required when no field is set",
            ));
        }
        return Ok(implied);
    }
    if paths.iter().any(|path| path == "*") {
        if paths.len() > 1 {
            return Err(Error::invalid("update_mask", "`*` must be the only path"));
        }
        return Ok(UPDATABLE.to_vec());
    }
    let mut violations = Violations::default();
    let mut known = Vec::new();
    for path in paths {
        let path = if path == "rate_limit" { "limit" } else { path };
        match UPDATABLE.iter().find(|field| **field == path) {
            Some(field) if !known.contains(field) => known.push(*field),
            Some(_) => {}
            None => violations.add(
                "update_mask",
                format!(
                    "{} cannot be updated: use display_name, description, labels, expire_time, role or limit",
                    quote(path)
                ),
            ),
        }
    }
    violations.finish()?;
    Ok(known)
}

/// The changes an update makes to `current`, enforcing the rules: text and
/// labels valid, expiry only earlier (and in the future), role only lower,
/// etag (if given) current.
fn changes_for(
    token: &v1::ApiToken,
    paths: &[&str],
    current: &TokenRecord,
    caller: &Principal,
    now: DateTime<Utc>,
    max_limit: RateLimit,
) -> Result<TokenChanges, Error> {
    if !token.etag.is_empty() && token.etag != current.etag() {
        return Err(Error::Aborted(format!(
            "etag {} does not match the current etag of {}: read it again and retry",
            quote(&token.etag),
            current.name
        )));
    }
    let mut violations = Violations::default();
    let mut changes = TokenChanges::default();
    for path in paths {
        match *path {
            "display_name" => {
                violations.check(validate::display_name(
                    "api_token.display_name",
                    &token.display_name,
                ));
                changes.display_name = Some(token.display_name.clone());
            }
            "description" => {
                violations.check(validate::description(
                    "api_token.description",
                    &token.description,
                ));
                changes.description = Some(token.description.clone());
            }
            "labels" => {
                let labels: BTreeMap<_, _> = token.labels.clone().into_iter().collect();
                validate::labels("api_token.labels", &labels, &mut violations);
                changes.labels = Some(labels);
            }
            "expire_time" => match expiry_change(token, current, now) {
                Ok(expiry) => changes.expire_time = expiry,
                Err(violation) => violations.check(Err(violation)),
            },
            "role" => match Role::from_proto(token.role) {
                None => violations.add(
                    "api_token.role",
                    "is required: ROLE_VIEWER, ROLE_EDITOR or ROLE_OWNER",
                ),
                Some(role) if role > current.role => violations.add(
                    "api_token.role",
                    format!(
                        "may only be lowered (currently {}): create a new token for a higher role",
                        current.role
                    ),
                ),
                Some(role) => {
                    caller.may_grant(role)?;
                    changes.role = (role != current.role).then_some(role);
                }
            },
            "limit" => {
                let requested = requested_limit(token, max_limit, &mut violations);
                if requested != current.rate_limit {
                    changes.rate_limit = Some(requested);
                }
            }
            _ => return Err(Error::Internal),
        }
    }
    violations.finish()?;
    // Unchanged values are no change at all (no new etag).
    if changes.display_name.as_ref() == Some(&current.display_name) {
        changes.display_name = None;
    }
    if changes.description.as_ref() == Some(&current.description) {
        changes.description = None;
    }
    if changes.labels.as_ref() == Some(&current.labels) {
        changes.labels = None;
    }
    Ok(changes)
}

/// The new expiry, if it changes: it must be set, in the future, and no
/// later than the current one.
fn expiry_change(
    token: &v1::ApiToken,
    current: &TokenRecord,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, apitoken_domain::error::FieldViolation> {
    let field = "api_token.expire_time";
    let Some(timestamp) = &token.expire_time else {
        return match current.expire_time {
            None => Ok(None),
            Some(_) => Err(apitoken_domain::error::FieldViolation::new(
                field,
                "may only be shortened: it cannot be removed",
            )),
        };
    };
    let expiry = from_timestamp(field, timestamp)?;
    validate::expire_time(field, expiry, now)?;
    match current.expire_time {
        Some(existing) if expiry > existing => Err(apitoken_domain::error::FieldViolation::new(
            field,
            format!("may only be shortened: it is {}", existing.to_rfc3339()),
        )),
        Some(existing) if expiry == existing => Ok(None),
        _ => Ok(Some(expiry)),
    }
}
