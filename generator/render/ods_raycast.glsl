// DepthFusion renderer: omni-directional stereo by casting one ray per output pixel against the displaced
// sphere of depthfusion_common.glsl (prepended, with #version, by generator/render/ods.py).
// The surface is the radial height field r = dfRadiusAt(direction): a ray from the eye at o along d first
// leaves the region |p| < r(p / |p|) at the visible point. From t0 (nearest radius − |o|: still inside) to
// t1 (farthest radius + |o|: outside) the ray is stepped; the first step outside is refined by bisection and
// a last secant step.

uniform sampler2D sOrigin;   // per output pixel: the eye's offset from the head (td_bridge.geometry.ods_rays)
uniform mat3 uHeadRotation;  // head frame → world (the ODS camera's yaw)
uniform vec3 uHead;          // head position
uniform vec2 uRadii;         // nearest and farthest surface radius of the frame
uniform int uSteps;          // march steps from t0 to t1

layout(location = 0) out vec4 fragColor;

float dfOutside(vec3 origin, vec3 direction, float t)
{
    vec3 p = origin + t * direction;
    return length(p) - dfRadiusAt(dfImageUV(normalize(p)));
}

void main()
{
    ivec2 pixel = ivec2(gl_FragCoord.xy);
    vec2 size = vec2(textureSize(sOrigin, 0));
    vec2 uv = vec2(gl_FragCoord.x / size.x, 1.0 - gl_FragCoord.y / size.y);  // image v runs top → bottom
    vec3 origin = uHead + uHeadRotation * texelFetch(sOrigin, pixel, 0).xyz;
    vec3 direction = uHeadRotation * dfDirection(uv);
    float reach = length(origin);
    float t0 = max(uRadii.x - reach, 0.0);
    float t1 = uRadii.y + reach;
    float step = (t1 - t0) / float(uSteps);
    float inside = t0;
    float outside = t1;
    float gapIn = dfOutside(origin, direction, t0);
    float gapOut = dfOutside(origin, direction, t1);
    for (int k = 1; k < uSteps; ++k) {
        float t = t0 + step * float(k);
        float gap = dfOutside(origin, direction, t);
        if (gap >= 0.0) {
            outside = t;
            gapOut = gap;
            break;
        }
        inside = t;
        gapIn = gap;
    }
    for (int k = 0; k < 4; ++k) {  // bisection, then one secant step inside the last bracket
        float t = 0.5 * (inside + outside);
        float gap = dfOutside(origin, direction, t);
        if (gap >= 0.0) {
            outside = t;
            gapOut = gap;
        } else {
            inside = t;
            gapIn = gap;
        }
    }
    float hitT = inside + (outside - inside) * clamp(-gapIn / max(gapOut - gapIn, 1e-20), 0.0, 1.0);
    vec3 hit = normalize(origin + hitT * direction);
    float keep = dfDisplace(hit).w;  // 0 next to a depth edge, as the vertex stage flags it
    float alpha = dfEdgeAlpha(keep);
    if (alpha < 0.0)
        discard;
    vec3 color = dfColor(dfImageUV(hit));  // the frame's colour (blended while a frame blend runs)
    fragColor = vec4(color * alpha, alpha);
}
