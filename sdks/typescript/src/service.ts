// RuntimeService for @grpc/grpc-js, from the descriptor protoc-gen-es generated (src/gen): each
// method's path and its (de)serializers are the generated message schemas' binary codecs.
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { makeGenericClientConstructor, type MethodDefinition, type ServiceDefinition } from "@grpc/grpc-js";
import { RuntimeService } from "./gen/kakeya/v1/runtime_pb.js";

type Shape = MessageShape<DescMessage>;

function codec(schema: DescMessage) {
  return {
    serialize: (msg: Shape) => Buffer.from(toBinary(schema, msg)),
    deserialize: (bytes: Buffer): Shape => fromBinary(schema, bytes),
  };
}

function definition(): ServiceDefinition {
  const methods: Record<string, MethodDefinition<Shape, Shape>> = {};
  for (const m of RuntimeService.methods) {
    const input = codec(m.input);
    const output = codec(m.output);
    methods[m.localName] = {
      path: `/${RuntimeService.typeName}/${m.name}`,
      requestStream: false,
      responseStream: m.methodKind === "server_streaming",
      requestSerialize: input.serialize,
      requestDeserialize: input.deserialize,
      responseSerialize: output.serialize,
      responseDeserialize: output.deserialize,
    };
  }
  return methods;
}

export const RuntimeServiceClient = makeGenericClientConstructor(definition(), "RuntimeService");
