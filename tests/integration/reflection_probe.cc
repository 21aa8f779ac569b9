// reflection_probe HOST:PORT: asks a server's gRPC reflection service (v1alpha) to list its
// services and prints them, one per line. The request and response are encoded by hand (the
// reflection protos are not installed as headers), which keeps this probe independent of the
// server's own generated code.
#include <cstdio>
#include <memory>
#include <string>

#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace {

// Reads a base-128 varint at text[*pos].
uint64_t Varint(const std::string& text, size_t* pos) {
  uint64_t value = 0;
  for (int shift = 0; *pos < text.size(); shift += 7) {
    const auto byte = static_cast<unsigned char>(text[(*pos)++]);
    value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) break;
  }
  return value;
}

// The length-delimited fields numbered `field` of a serialized message.
std::vector<std::string> Fields(const std::string& message, uint64_t field) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < message.size()) {
    const uint64_t key = Varint(message, &pos);
    const uint64_t wire = key & 7;
    if (wire == 2) {
      const uint64_t length = Varint(message, &pos);
      if ((key >> 3) == field) out.push_back(message.substr(pos, length));
      pos += length;
    } else if (wire == 0) {
      Varint(message, &pos);
    } else {
      return out;  // not used by these messages
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: reflection_probe HOST:PORT\n");
    return 2;
  }
  auto channel = grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::CompletionQueue queue;
  void* tag = nullptr;
  bool ok = false;
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &queue);
  call->StartCall(reinterpret_cast<void*>(1));
  queue.Next(&tag, &ok);
  // ServerReflectionRequest{list_services (field 7) = ""}.
  const std::string request("\x3a\x00", 2);
  grpc::Slice slice(request);
  grpc::ByteBuffer buffer(&slice, 1);
  call->WriteLast(buffer, grpc::WriteOptions(), reinterpret_cast<void*>(2));
  queue.Next(&tag, &ok);
  grpc::ByteBuffer reply;
  call->Read(&reply, reinterpret_cast<void*>(3));
  queue.Next(&tag, &ok);
  if (!ok) {
    std::fprintf(stderr, "reflection_probe: no reply from %s\n", argv[1]);
    return 1;
  }
  std::vector<grpc::Slice> slices;
  (void)reply.Dump(&slices);
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // ServerReflectionResponse.list_services_response (6) -> service (1) -> name (1).
  int printed = 0;
  for (const std::string& list : Fields(bytes, 6)) {
    for (const std::string& service : Fields(list, 1)) {
      for (const std::string& name : Fields(service, 1)) {
        std::printf("%s\n", name.c_str());
        ++printed;
      }
    }
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  queue.Next(&tag, &ok);
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }
  return printed > 0 ? 0 : 1;
}
