//! `ListAuditEvents`: a namespace's audit log, filtered and paged, for
//! owners.

use super::*;

impl ApiTokenService {
    pub(super) async fn list_audit(
        &self,
        request: Request<v1::ListAuditEventsRequest>,
    ) -> Result<v1::ListAuditEventsResponse, Error> {
        let (_, namespace) = self
            .authorize_on_parent(&request, &request.get_ref().parent, Role::Owner)
            .await?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let page_size = page_size(&mut violations, request.page_size);
        let filter = violations.take(AuditFilter::parse("filter", &request.filter))?;
        let query =
            QueryFingerprint::of(&request.parent, &format!("audit:{}", request.filter), false);
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
        let mut records = self
            .store
            .list_audit(namespace.as_str(), &filter, before_id, page_size + 1)
            .await?;
        let next_page_token = next_page(&mut records, page_size, |last| {
            page::encode(&self.keys, query, last.id)
        });
        Ok(v1::ListAuditEventsResponse {
            audit_events: records.iter().map(audit_event).collect(),
            next_page_token,
        })
    }
}
