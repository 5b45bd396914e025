// The gRPC services in-process on a loopback port with the real default model ($SEMSHARE_MODEL),
// driven by many client threads at once: unary and streaming calls, cancellations mid-stream,
// a full queue and concurrent admin calls. Checks the answers and that the server ends idle
// (no request running, no KV held). Its point is the concurrency of the callback reactors, the
// pipeline (front workers and engine loop) and the store: it also runs under ThreadSanitizer (label
// tsan).
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend_factory.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/service.h"
#include "tests/test_util.h"

namespace semshare::server {
namespace {

class InProcessServer {
 public:
  explicit InProcessServer(const engine::Model* model)
      : state_(config_, std::nullopt), semshare_(&state_), admin_(&state_) {
    core_.model = model;
    core_.backend_name = "cpu";
    serving::PipelineOptions po;
    po.serving.reuse.min_reuse_tokens = 16;
    po.serving.max_prompt_tokens = 512;
    po.front_workers = 2;
    po.max_queue = 3;
    po.loop.kv_cache_bytes = int64_t{512} << 20;
    core_.limits.default_threshold = 0.8f;
    core_.limits.default_max_tokens = 4;
    metrics_ = std::make_unique<Metrics>("test");
    core_.metrics = metrics_.get();
    store::StoreOptions so;
    so.memory_shards = 4;
    so.memory_byte_budget = int64_t{256} << 20;
    store_ = *store::ReferenceStore::Open(so);
    core_.store = store_.get();
    pipeline_ = *serving::Pipeline::Create(
        std::shared_ptr<const engine::Model>(model, [](const engine::Model*) {}), po, core_.store,
        metrics_.get());
    core_.pipeline = pipeline_.get();
    state_.Attach(&core_);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&semshare_);
    builder.RegisterService(&admin_);
    server_ = builder.BuildAndStart();
  }
  ~InProcessServer() {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    pipeline_.reset();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  serving::Pipeline& pipeline() { return *pipeline_; }
  store::ReferenceStore& store() { return *store_; }

 private:
  ServerConfig config_;
  ServiceState state_;
  SemShareService semshare_;
  CacheAdminService admin_;
  ServingCore core_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<store::ReferenceStore> store_;
  std::unique_ptr<serving::Pipeline> pipeline_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST(ServerInProcessTest, ConcurrentCallsCancellationsAndAdmin) {
  std::string error;
  const engine::Model* model = testing::DefaultModel(&error);
  ASSERT_NE(model, nullptr) << error;
  InProcessServer server(model);
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  const std::string passage =
      "The quick brown fox jumps over the lazy dog near the river bank while the farmer watches "
      "from the old wooden fence and the children play in the tall green grass.";

  std::atomic<int> ok{0}, exhausted{0}, cancelled{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto stub = v1::SemShare::NewStub(channel);
      for (int i = 0; i < 3; ++i) {
        v1::GenerateRequest req;
        req.set_prompt(passage + (i % 2 ? " Again." : ""));
        req.mutable_sampling()->set_max_tokens(2);
        grpc::ClientContext ctx;
        grpc::Status s;
        if ((t + i) % 3 == 0) {
          v1::GenerateResponse resp;
          s = stub->Generate(&ctx, req, &resp);
          if (s.ok()) {
            EXPECT_FALSE(resp.cache().result().empty());
          }
        } else {
          auto reader = stub->GenerateStream(&ctx, req);
          v1::GenerateStreamResponse msg;
          bool cancel = (t + i) % 3 == 1;
          while (reader->Read(&msg)) {
            if (cancel) {
              ctx.TryCancel();  // mid-stream
              cancel = false;
            }
          }
          s = reader->Finish();
        }
        if (s.ok()) {
          ++ok;
        } else if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          ++exhausted;
        } else if (s.error_code() == grpc::StatusCode::CANCELLED) {
          ++cancelled;
        } else {
          ADD_FAILURE() << s.error_code() << " " << s.error_message();
          ++other;
        }
      }
    });
  }
  threads.emplace_back([&] {  // admin calls against the store while it is being written
    auto admin = v1::CacheAdmin::NewStub(channel);
    for (int i = 0; i < 10; ++i) {
      grpc::ClientContext ctx;
      v1::ListReferencesResponse resp;
      v1::ListReferencesRequest req;
      req.set_tenant("*");
      EXPECT_TRUE(admin->ListReferences(&ctx, req, &resp).ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  for (std::thread& t : threads) t.join();
  EXPECT_GT(ok.load(), 0);
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(ok + exhausted + cancelled + other, 12);
  EXPECT_TRUE(server.pipeline().WaitIdle(30000));
  server.store().Flush();
  EXPECT_EQ(server.pipeline().running(), 0);
  EXPECT_EQ(server.pipeline().waiting(), 0);
}

}  // namespace
}  // namespace semshare::server
