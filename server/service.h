// The gRPC services (proto/semshare/v1/semshare.proto) on the callback API: a thin protocol
// adapter over serving::Pipeline. Handlers never block: they authenticate, validate and hand
// the work to the pipeline, whose front worker or engine loop finishes the call (unary) or
// feeds a ServerWriteReactor that writes one message at a time and coalesces text produced
// while a write is in flight (streams).
//
// Methods whose requests carry user text (Generate, GenerateStream, Tokenize, AddReference,
// LookupReference) take the raw bytes and parse them here, so a request that is not a valid
// message (e.g. a string field with invalid UTF-8) gets INVALID_ARGUMENT with a message
// instead of gRPC's generic parse failure.
//
// Until the model is loaded (Attach) and while draining, every method answers UNAVAILABLE.
#ifndef SEMSHARE_SERVER_SERVICE_H_
#define SEMSHARE_SERVER_SERVICE_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "cache_store/reference_store.h"
#include "engine/model/model.h"
#include "grpcpp/grpcpp.h"
#include "semshare/v1/semshare.grpc.pb.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/request_validation.h"
#include "serving/pipeline.h"

namespace semshare::server {

// What the services need once the model is loaded. Owned by main; outlives the gRPC server.
struct ServingCore {
  const engine::Model* model = nullptr;
  Metrics* metrics = nullptr;
  serving::Pipeline* pipeline = nullptr;  // the one path every request's work takes
  store::ReferenceStore* store = nullptr;
  RequestLimits limits;
  std::string backend_name;
};

// State shared by both services: config, keys, the core (null until loaded), draining.
class ServiceState {
 public:
  ServiceState(const ServerConfig& config, std::optional<ApiKeys> keys)
      : config_(config), keys_(std::move(keys)) {}

  void Attach(ServingCore* core) { core_.store(core); }
  void StartDraining() { draining_ = true; }
  bool draining() const { return draining_; }
  ServingCore* core() const { return core_.load(); }
  const ServerConfig& config() const { return config_; }

  // OK with the caller's principal, or UNAVAILABLE (loading, draining), UNAUTHENTICATED,
  // PERMISSION_DENIED (admin methods for a user key). Without keys everyone is tenant
  // "default" with role admin (the server is then bound to loopback only).
  absl::StatusOr<Principal> Admit(grpc::CallbackServerContext* ctx, bool admin) const;
  store::Namespace NamespaceOf(const Principal& p) const;
  // Counts the RPC in requests_total and converts the status (the one conversion point).
  grpc::Status Complete(const char* method, const absl::Status& s) const;

 private:
  const ServerConfig& config_;
  const std::optional<ApiKeys> keys_;
  std::atomic<ServingCore*> core_{nullptr};
  std::atomic<bool> draining_{false};
};

using SemShareBase = v1::SemShare::WithRawCallbackMethod_Generate<
    v1::SemShare::WithRawCallbackMethod_GenerateStream<v1::SemShare::WithRawCallbackMethod_Tokenize<
        v1::SemShare::WithRawCallbackMethod_AddReference<
            v1::SemShare::WithRawCallbackMethod_LookupReference<
                v1::SemShare::WithCallbackMethod_GetModelInfo<v1::SemShare::Service>>>>>>;

class SemShareService final : public SemShareBase {
 public:
  explicit SemShareService(ServiceState* state) : state_(state) {}

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* ctx,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerateStream(
      grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* AddReference(grpc::CallbackServerContext* ctx,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* LookupReference(grpc::CallbackServerContext* ctx,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx,
                                         const v1::GetModelInfoRequest* request,
                                         v1::GetModelInfoResponse* response) override;

 private:
  ServiceState* state_;
};

class CacheAdminService final : public v1::CacheAdmin::CallbackService {
 public:
  explicit CacheAdminService(ServiceState* state) : state_(state) {}

  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* ctx,
                                     const v1::GetStatsRequest* request,
                                     v1::GetStatsResponse* response) override;
  grpc::ServerUnaryReactor* ListReferences(grpc::CallbackServerContext* ctx,
                                           const v1::ListReferencesRequest* request,
                                           v1::ListReferencesResponse* response) override;
  grpc::ServerUnaryReactor* DeleteReference(grpc::CallbackServerContext* ctx,
                                            const v1::DeleteReferenceRequest* request,
                                            v1::DeleteReferenceResponse* response) override;
  grpc::ServerUnaryReactor* Clear(grpc::CallbackServerContext* ctx, const v1::ClearRequest* request,
                                  v1::ClearResponse* response) override;

 private:
  ServiceState* state_;
};

}  // namespace semshare::server

#endif  // SEMSHARE_SERVER_SERVICE_H_
