#include "server/interceptors.h"

namespace sluice::server {
namespace {

// Counts each RPC by method as it arrives. An auth interceptor will sit beside it and
// reject calls before they reach a service.
class RpcCountingInterceptor final : public grpc::experimental::Interceptor {
 public:
  RpcCountingInterceptor(grpc::experimental::ServerRpcInfo* info, Metrics* metrics) {
    if (metrics != nullptr && info->method() != nullptr) metrics->RpcStarted(info->method());
  }
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    methods->Proceed();
  }
};

class RpcCountingFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcCountingFactory(Metrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcCountingInterceptor(info, metrics_);
  }

 private:
  Metrics* metrics_;
};

}  // namespace

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MakeInterceptorFactories(Metrics* metrics) {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<RpcCountingFactory>(metrics));
  return factories;
}

}  // namespace sluice::server
