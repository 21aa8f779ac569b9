// Gloo collectives for data-parallel CPU training (see gloo_group.h).
#include "worker/collective/gloo_group.h"

#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "gloo/allreduce.h"
#include "gloo/math.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/device.h"

namespace raptr {

GlooGroup::GlooGroup(std::shared_ptr<gloo::Context> context, int rank, int size,
                     std::chrono::milliseconds timeout)
    : context_(std::move(context)), rank_(rank), size_(size), timeout_(timeout) {}

GlooGroup::~GlooGroup() = default;

absl::StatusOr<std::unique_ptr<GlooGroup>> GlooGroup::Connect(gloo::rendezvous::Store& store,
                                                              int rank, int size,
                                                              const std::string& host,
                                                              std::chrono::milliseconds timeout) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is not in a group of ", size));
  }
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = host;
    std::shared_ptr<gloo::transport::Device> device = gloo::transport::tcp::CreateDevice(attr);
    auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    context->setTimeout(timeout);
    context->connectFullMesh(store, device);
    return std::unique_ptr<GlooGroup>(new GlooGroup(std::move(context), rank, size, timeout));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("Gloo rendezvous of rank ", rank, " of ", size,
                                               " at ", host, " failed: ", e.what()));
  }
}

absl::Status GlooGroup::AllReduceSum(float* data, size_t count) {
  if (size_ == 1 || count == 0) return absl::OkStatus();
  try {
    gloo::AllreduceOptions options(context_);
    options.setOutput(data, count);
    options.setReduceFunction(
        static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
    options.setTag(tag_++);
    options.setTimeout(timeout_);
    gloo::allreduce(options);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("all-reduce of ", count, " floats on rank ", rank_, " failed: ", e.what()));
  }
  bytes_reduced_ += static_cast<int64_t>(count * sizeof(float));
  return absl::OkStatus();
}

}  // namespace raptr
