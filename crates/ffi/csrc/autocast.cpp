// libtorch's autocast state for one device type: enable, choose the dtype, read back.
// device: 0 = CPU, 1 = CUDA. dtype: 0 = float16, 1 = bfloat16 (others read back as -1).
#include <ATen/autocast_mode.h>

static at::DeviceType device_of(int device) { return device == 1 ? at::kCUDA : at::kCPU; }

extern "C" {
int difflab_autocast_is_enabled(int device) { return at::autocast::is_autocast_enabled(device_of(device)) ? 1 : 0; }
void difflab_autocast_set_enabled(int device, int enabled) {
  at::autocast::set_autocast_enabled(device_of(device), enabled != 0);
}
int difflab_autocast_get_dtype(int device) {
  auto t = at::autocast::get_autocast_dtype(device_of(device));
  if (t == at::kHalf) return 0;
  if (t == at::kBFloat16) return 1;
  return -1;
}
void difflab_autocast_set_dtype(int device, int dtype) {
  at::autocast::set_autocast_dtype(device_of(device), dtype == 1 ? at::kBFloat16 : at::kHalf);
}
int difflab_autocast_increment_nesting() { return at::autocast::increment_nesting(); }
int difflab_autocast_decrement_nesting() { return at::autocast::decrement_nesting(); }
void difflab_autocast_clear_cache() { at::autocast::clear_cache(); }
}
