//! An example service protected by `apitoken-interceptor`: an in-memory
//! inventory per namespace whose methods need viewer (list), editor
//! (create) or owner (delete). Handlers read the caller with
//! [`RequestPrincipal::principal`] and check the namespace named in their
//! own request with `principal.authorize(namespace, role)`.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, PoisonError},
};

use apitoken_interceptor::{ApiTokenAuth, AuthBuilder, RequestPrincipal, Role};
use tonic::{Request, Response, Status};

/// Generated code of `inventory.v1`.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("inventory.v1");

    /// The encoded descriptor set of `inventory.v1`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("inventory_descriptor");
}

use pb::inventory_service_server::{InventoryService, InventoryServiceServer};

/// The role each method needs.
pub fn policy(builder: AuthBuilder) -> AuthBuilder {
    builder
        .require("/inventory.v1.InventoryService/*", Role::Viewer)
        .require("/inventory.v1.InventoryService/CreateItem", Role::Editor)
        .require("/inventory.v1.InventoryService/DeleteItem", Role::Owner)
}

/// The inventory.
#[derive(Debug, Default)]
pub struct Inventory {
    items: Mutex<HashMap<String, BTreeSet<String>>>,
}

#[tonic::async_trait]
impl InventoryService for Inventory {
    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        request
            .principal()?
            .authorize(&request.get_ref().namespace, Role::Viewer)?;
        let items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        let items = items
            .get(&request.get_ref().namespace)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        Ok(Response::new(pb::ListItemsResponse { items }))
    }

    async fn create_item(
        &self,
        request: Request<pb::CreateItemRequest>,
    ) -> Result<Response<pb::CreateItemResponse>, Status> {
        request
            .principal()?
            .authorize(&request.get_ref().namespace, Role::Editor)?;
        let request = request.into_inner();
        if request.item.is_empty() {
            return Err(Status::invalid_argument("item is required"));
        }
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(request.namespace)
            .or_default()
            .insert(request.item);
        Ok(Response::new(pb::CreateItemResponse {}))
    }

    async fn delete_item(
        &self,
        request: Request<pb::DeleteItemRequest>,
    ) -> Result<Response<pb::DeleteItemResponse>, Status> {
        request
            .principal()?
            .authorize(&request.get_ref().namespace, Role::Owner)?;
        let request = request.into_inner();
        let removed = self
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&request.namespace)
            .is_some_and(|items| items.remove(&request.item));
        if removed {
            Ok(Response::new(pb::DeleteItemResponse {}))
        } else {
            Err(Status::not_found(format!(
                "item {:?} not found",
                request.item
            )))
        }
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let principal = request.principal()?;
        Ok(Response::new(pb::WhoAmIResponse {
            api_token: principal.name.to_string(),
            role: principal.role.to_string(),
            display_name: principal.display_name.clone(),
            labels: principal
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        }))
    }
}

/// Serves the inventory behind `auth` on `listener` until `shutdown`, with
/// gRPC health and reflection (both public by the default policy, so
/// `grpcurl list` and health checks need no token).
pub async fn serve(
    auth: &ApiTokenAuth,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl prints an ErrorInfo.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1()?;
    let reflection_v1alpha =
        reflection(tonic_reflection::server::Builder::configure()).build_v1alpha()?;
    use tokio_stream::StreamExt as _;
    // TCP_NODELAY: a small reply is sent at once, not after the peer's
    // delayed ACK.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        if let Ok(stream) = &stream {
            let _ = stream.set_nodelay(true);
        }
        stream
    });
    tonic::transport::Server::builder()
        .layer(auth.layer())
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InventoryServiceServer::new(Inventory::default()))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
