#include "api/framing.h"

namespace m2mvault::api {

std::string encode_frame(const nlohmann::json& message) {
  std::string body = message.dump();
  const auto n = static_cast<std::uint32_t>(body.size());
  std::string frame;
  frame.reserve(4 + body.size());
  frame.push_back(static_cast<char>(n >> 24));
  frame.push_back(static_cast<char>(n >> 16));
  frame.push_back(static_cast<char>(n >> 8));
  frame.push_back(static_cast<char>(n));
  frame += body;
  return frame;
}

std::uint32_t decode_frame_length(const std::uint8_t header[4]) noexcept {
  return (std::uint32_t{header[0]} << 24) | (std::uint32_t{header[1]} << 16) |
         (std::uint32_t{header[2]} << 8) | std::uint32_t{header[3]};
}

}  // namespace m2mvault::api
